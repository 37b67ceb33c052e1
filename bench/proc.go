package bench

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// clockTicks is USER_HZ, the unit of utime and stime in /proc/PID/stat. It
// is 100 on every Linux architecture Go supports.
const clockTicks = 100

// ProcSample is one reading of a process's counters.
type ProcSample struct {
	At      time.Time
	CPU     time.Duration // user + system time so far
	RSS     int64         // bytes resident now
	PeakRSS int64         // VmHWM: bytes resident at most so far
}

// ReadProc reads /proc/PID/stat and /proc/PID/status.
func ReadProc(pid int) (ProcSample, error) {
	s := ProcSample{At: time.Now()}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, fmt.Errorf("server process %d: %w", pid, err)
	}
	if s.CPU, err = parseStatCPU(stat); err != nil {
		return s, fmt.Errorf("server process %d: %w", pid, err)
	}
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return s, fmt.Errorf("server process %d: %w", pid, err)
	}
	s.RSS = statusKB(status, "VmRSS:")
	s.PeakRSS = statusKB(status, "VmHWM:")
	return s, nil
}

// parseStatCPU returns utime+stime from a /proc/PID/stat line. The command
// name (field 2) may hold spaces and parentheses, so fields are counted
// from the last ')'.
func parseStatCPU(stat []byte) (time.Duration, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("malformed stat")
	}
	f := strings.Fields(string(stat[i+1:]))
	// After the name: state(3) ppid(4) … utime(14) stime(15): indexes 11, 12.
	if len(f) < 13 {
		return 0, fmt.Errorf("malformed stat: %d fields", len(f))
	}
	u, err1 := strconv.ParseInt(f[11], 10, 64)
	s, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("malformed stat: utime %q stime %q", f[11], f[12])
	}
	return time.Duration(u+s) * time.Second / clockTicks, nil
}

// statusKB returns a "Key:   N kB" value of /proc/PID/status in bytes.
func statusKB(status []byte, key string) int64 {
	for line := range strings.SplitSeq(string(status), "\n") {
		if rest, ok := strings.CutPrefix(line, key); ok {
			f := strings.Fields(rest)
			if len(f) > 0 {
				n, _ := strconv.ParseInt(f[0], 10, 64)
				return n * 1024
			}
		}
	}
	return 0
}

// ProcUsage is a process's resource use between two samples.
type ProcUsage struct {
	CPU      time.Duration `json:"cpu_ns"`
	CPUCores float64       `json:"cpu_cores"` // CPU time / wall time
	// CPUPerOp is CPU time per successful operation: on a shared machine
	// it moves less than throughput, which depends on the CPU the server
	// gets.
	CPUPerOp time.Duration `json:"cpu_per_op_ns,omitempty"`
	RSS      int64         `json:"rss_bytes"` // at the end
	PeakRSS  int64         `json:"peak_rss_bytes"`
}

// Usage is the difference between two samples.
func Usage(before, after ProcSample) ProcUsage {
	u := ProcUsage{CPU: after.CPU - before.CPU, RSS: after.RSS, PeakRSS: after.PeakRSS}
	if wall := after.At.Sub(before.At); wall > 0 {
		u.CPUCores = u.CPU.Seconds() / wall.Seconds()
	}
	return u
}

func pidSelf() int { return os.Getpid() }
