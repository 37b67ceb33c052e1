package audit

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
)

func TestStreamSinkChainVerifies(t *testing.T) {
	var buf bytes.Buffer
	l, err := New(Options{HMACKey: bytes.Repeat([]byte{7}, 32)}, NewStreamSink("stdout", &buf))
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 5; i++ {
		if err := l.Log(context.Background(), Record{Identity: "token:x", Operation: "op", Status: "OK",
			Request: map[string]Value{"password": Secret("hunter2-canary")}}); err != nil {
			t.Fatal(err)
		}
	}
	if strings.Contains(buf.String(), "hunter2-canary") {
		t.Fatal("a secret reached the stream")
	}
	rep, err := VerifyFile(bytes.NewReader(buf.Bytes()), VerifyOptions{})
	if err != nil || rep.Records != 5 {
		t.Fatalf("verify: %v (%d records)", err, rep.Records)
	}
	lines := strings.SplitAfter(buf.String(), "\n")
	tampered := strings.Join(append(lines[:1], lines[2:]...), "")
	if _, err := VerifyFile(strings.NewReader(tampered), VerifyOptions{}); !errors.Is(err, ErrTampered) {
		t.Fatalf("a removed line went unnoticed: %v", err)
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

func TestStreamSinkFailureFailsLog(t *testing.T) {
	l, err := New(Options{HMACKey: bytes.Repeat([]byte{7}, 32)}, NewStreamSink("syslog", failingWriter{}))
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Log(context.Background(), Record{Identity: "x", Operation: "op", Status: "OK"}); !errors.Is(err, ErrSink) {
		t.Fatalf("err = %v, want ErrSink", err)
	}
}
