package main

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"
	"time"

	"google.golang.org/grpc"

	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// buildInfo is the version, commit and Go version of this binary.
func buildInfo() map[string]string {
	out := map[string]string{"version": version, "go": runtime.Version()}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				out["commit"] = s.Value
			case "vcs.time":
				out["commit_time"] = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					out["modified"] = "true"
				}
			}
		}
	}
	return out
}

func runVersion(_ context.Context, env *cliEnv, args []string) error {
	fs := newFlagSet(env, "version", "sigil version [--format text|json]  (also sigil --version)")
	format := fs.String("format", "text", "output format: text or json")
	field := fs.String("field", "", "print only this field (version, commit, go)")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("version takes no arguments")
	}
	cf := clientFlags{format: *format, field: *field, env: env, addr: "-"}
	if err := cf.validate(); err != nil {
		return err
	}
	bi := buildInfo()
	return cf.output(bi, func(w io.Writer) error {
		line := "sigil " + bi["version"]
		if c := bi["commit"]; c != "" {
			line += " (commit " + c[:min(12, len(c))]
			if bi["modified"] == "true" {
				line += ", modified"
			}
			line += ")"
		}
		_, err := fmt.Fprintf(w, "%s %s\n", line, bi["go"])
		return err
	})
}

// statusView is the JSON shape of `sigil status --format json`.
type statusView struct {
	Version              string     `json:"version"`
	Initialized          bool       `json:"initialized"`
	Sealed               bool       `json:"sealed"`
	UnsealProgress       string     `json:"unseal_progress,omitempty"`
	UnsealSharesGiven    int32      `json:"unseal_shares_given"`
	UnsealThreshold      int32      `json:"unseal_threshold,omitempty"`
	Storage              string     `json:"storage"`
	Custody              string     `json:"custody"`
	CASubject            string     `json:"ca_subject,omitempty"`
	CANotAfter           *time.Time `json:"ca_not_after,omitempty"`
	IntermediateSubject  string     `json:"intermediate_subject,omitempty"`
	IntermediateNotAfter *time.Time `json:"intermediate_not_after,omitempty"`
	ServerCommit         string     `json:"commit,omitempty"`
	ServerCommitTime     string     `json:"commit_time,omitempty"`
	ServerGoVersion      string     `json:"go_version,omitempty"`
	ServerTime           *time.Time `json:"server_time,omitempty"`
	ClientVersion        string     `json:"client_version"`
	ClientCommit         string     `json:"client_commit,omitempty"`
}

func unixTime(sec int64) *time.Time {
	if sec == 0 {
		return nil
	}
	t := time.Unix(sec, 0).UTC()
	return &t
}

// serverBuild is the server's build in one line: commit, commit time, Go.
func serverBuild(v statusView) string {
	var parts []string
	if c := v.ServerCommit; c != "" {
		dirty := strings.HasSuffix(c, "-dirty")
		c = strings.TrimSuffix(c, "-dirty")
		c = "commit " + c[:min(12, len(c))]
		if dirty {
			c += " (modified)"
		}
		parts = append(parts, c)
	}
	if v.ServerCommitTime != "" {
		parts = append(parts, v.ServerCommitTime)
	}
	if v.ServerGoVersion != "" {
		parts = append(parts, v.ServerGoVersion)
	}
	return strings.Join(parts, ", ")
}

// runStatus shows the server's state. Like `vault status` it exits 2 when
// the server is sealed, so scripts can branch on it.
func runStatus(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "status", "sigil status [--format text|json] [--field NAME]  (exit 2: sealed)")
	cf.register(fs, env)
	return call(ctx, fs, &cf, args, 0, 0, 15*time.Second, func(ctx context.Context, conn *grpc.ClientConn) error {
		st, err := sigilv1.NewSysServiceClient(conn).Status(ctx, &sigilv1.StatusRequest{})
		if err != nil {
			return err
		}
		v := statusView{
			Version: st.GetVersion(), Initialized: st.GetInitialized(), Sealed: st.GetSealed(),
			Storage: st.GetStorageBackend(), Custody: st.GetCustody(),
			CASubject: st.GetCaSubject(), CANotAfter: unixTime(st.GetCaNotAfterUnix()),
			IntermediateSubject: st.GetIntermediateSubject(), IntermediateNotAfter: unixTime(st.GetIntermediateNotAfterUnix()),
			UnsealSharesGiven: st.GetUnsealProgress(), UnsealThreshold: st.GetUnsealThreshold(),
			ServerCommit: st.GetBuildRevision(), ServerCommitTime: st.GetBuildTime(), ServerGoVersion: st.GetGoVersion(),
			ServerTime:    unixTime(st.GetServerTimeUnix()),
			ClientVersion: version, ClientCommit: buildInfo()["commit"],
		}
		if st.GetSealed() && st.GetUnsealThreshold() > 0 {
			v.UnsealProgress = fmt.Sprintf("%d/%d", st.GetUnsealProgress(), st.GetUnsealThreshold())
		}
		err = cf.output(v, func(w io.Writer) error {
			fmt.Fprintf(w, "Version:       %s\n", v.Version)
			if b := serverBuild(v); b != "" {
				fmt.Fprintf(w, "Build:         %s\n", b)
			}
			fmt.Fprintf(w, "Initialized:   %t\n", v.Initialized)
			fmt.Fprintf(w, "Sealed:        %t\n", v.Sealed)
			if v.UnsealProgress != "" {
				fmt.Fprintf(w, "Unseal:        %s shares\n", v.UnsealProgress)
			} else if v.UnsealThreshold > 0 {
				fmt.Fprintf(w, "Threshold:     %d shares\n", v.UnsealThreshold)
			}
			fmt.Fprintf(w, "Storage:       %s\n", v.Storage)
			fmt.Fprintf(w, "Custody:       %s\n", v.Custody)
			if v.CASubject != "" {
				fmt.Fprintf(w, "Root CA:       %s (expires %s)\n", v.CASubject, v.CANotAfter.Format(time.RFC3339))
			}
			if v.IntermediateSubject != "" {
				fmt.Fprintf(w, "Intermediate:  %s (expires %s)\n", v.IntermediateSubject, v.IntermediateNotAfter.Format(time.RFC3339))
			}
			return nil
		})
		if err != nil {
			return err
		}
		if v.Sealed {
			return &exitError{code: 2}
		}
		return nil
	})
}
