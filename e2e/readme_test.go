package e2e

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"
)

// readmeBlock is one ```sh block of a document.
type readmeBlock struct {
	file string
	line int
	text string
	skip string // why it is not run; empty: run it
}

// readmeSkipMarker precedes a block that needs something the test cannot
// provide (an HSM, PostgreSQL, DNS); the reason is required.
const readmeSkipMarker = "<!-- doctest: skip"

// readmeBlocks extracts the ```sh blocks of a Markdown file, in order.
func readmeBlocks(t *testing.T, path string) []readmeBlock {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var blocks []readmeBlock
	var cur *readmeBlock
	skip := ""
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		trimmed := strings.TrimSpace(line)
		switch {
		case cur != nil && trimmed == "```":
			blocks = append(blocks, *cur)
			cur = nil
		case cur != nil:
			cur.text += line + "\n"
		case trimmed == "```sh":
			cur = &readmeBlock{file: path, line: n, skip: skip}
			skip = ""
		case strings.HasPrefix(trimmed, readmeSkipMarker):
			skip = strings.TrimSpace(strings.TrimSuffix(strings.TrimPrefix(trimmed, readmeSkipMarker), "-->"))
			if skip == "" {
				t.Fatalf("%s:%d: a doctest skip needs a reason", path, n)
			}
		case trimmed != "":
			// A marker applies only to the block right after it.
			skip = ""
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if cur != nil {
		t.Fatalf("%s:%d: unterminated ```sh block", path, cur.line)
	}
	return blocks
}

// TestReadme runs the README's and docs/*.md's shell blocks, in order, each
// file in one bash session against its own dev server: the docs cannot
// drift from the code without this failing. Ports are the only thing
// adapted, as a reader would adapt them.
func TestReadme(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Fatal("bash is needed: apt-get install bash")
	}
	for _, tool := range []string{"openssl", "curl", "ssh-keygen"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is needed by the README's blocks: run scripts/deps.sh", tool)
		}
	}
	docs, err := filepath.Glob("../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(docs)
	files := append([]string{"../README.md"}, docs...)
	ran := 0
	for _, file := range files {
		blocks := readmeBlocks(t, file)
		var run []readmeBlock
		for _, b := range blocks {
			if b.skip == "" {
				run = append(run, b)
			}
		}
		if len(run) == 0 {
			continue
		}
		ran += len(run)
		t.Run(filepath.Base(file), func(t *testing.T) {
			readmeRunFile(t, bash, run)
		})
	}
	if ran == 0 {
		t.Fatal("no ```sh block found to run")
	}
}

func readmeRunFile(t *testing.T, bash string, blocks []readmeBlock) {
	work := t.TempDir()
	// The last --http-addr given wins, so the test knows the plain-HTTP port.
	httpAddr := freeAddr(t)
	d := startDev(t, filepath.Join(work, ".sigil-dev"), "--http-addr", httpAddr)
	_, httpsPort, _ := net.SplitHostPort(d.httpsAddr)
	_, httpPort, _ := net.SplitHostPort(httpAddr)
	ports := strings.NewReplacer(
		"127.0.0.1:8443", d.httpsAddr, "localhost:8443", "localhost:"+httpsPort,
		"127.0.0.1:8444", d.grpcAddr,
		"127.0.0.1:8445", "127.0.0.1:"+httpPort)

	// One script: shell variables set by a block are there for the next, as
	// in a reader's terminal. Each block announces itself on stderr so a
	// failure names it.
	var script strings.Builder
	script.WriteString("set -eo pipefail\n")
	for _, b := range blocks {
		fmt.Fprintf(&script, "echo '>>> %s:%d' >&2\n", filepath.Base(b.file), b.line)
		script.WriteString(ports.Replace(b.text))
	}
	home := filepath.Join(work, "home")
	if err := os.MkdirAll(home, 0o700); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bash, "-c", script.String())
	cmd.Dir = work
	cmd.Env = []string{
		"PATH=" + filepath.Dir(sigilBin) + ":" + os.Getenv("PATH"),
		"HOME=" + home,
		"LANG=C.UTF-8",
		"SIGIL_ADDR=" + d.exports["SIGIL_ADDR"],
		"SIGIL_TOKEN=" + d.exports["SIGIL_TOKEN"],
		"SIGIL_CACERT=" + d.exports["SIGIL_CACERT"],
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		last := "(before the first block)"
		for _, l := range strings.Split(string(out), "\n") {
			if strings.HasPrefix(l, ">>> ") {
				last = strings.TrimPrefix(l, ">>> ")
			}
		}
		t.Fatalf("the block at %s failed: %v\n--- output ---\n%s", last, err, out)
	}
}
