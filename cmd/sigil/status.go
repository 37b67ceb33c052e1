package main

import (
	"context"
	"fmt"
	"time"

	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

func runVersion(_ context.Context, env *cliEnv, args []string) error {
	fs := newFlagSet(env, "version", "sigil version")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return usagef("version takes no arguments")
	}
	fmt.Fprintf(env.stdout, "sigil %s\n", version)
	return nil
}

// statusView is the JSON shape of `sigil status --format json`.
type statusView struct {
	Version              string     `json:"version"`
	Initialized          bool       `json:"initialized"`
	Sealed               bool       `json:"sealed"`
	UnsealProgress       string     `json:"unseal_progress,omitempty"`
	Storage              string     `json:"storage"`
	Custody              string     `json:"custody"`
	CASubject            string     `json:"ca_subject,omitempty"`
	CANotAfter           *time.Time `json:"ca_not_after,omitempty"`
	IntermediateSubject  string     `json:"intermediate_subject,omitempty"`
	IntermediateNotAfter *time.Time `json:"intermediate_not_after,omitempty"`
	ClientVersion        string     `json:"client_version"`
}

func unixTime(sec int64) *time.Time {
	if sec == 0 {
		return nil
	}
	t := time.Unix(sec, 0).UTC()
	return &t
}

func runStatus(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "status", "sigil status [--format text|json]")
	cf.register(fs, env, true)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := cf.validate(); err != nil {
		return err
	}
	conn, err := cf.dial()
	if err != nil {
		return err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	st, err := sigilv1.NewSysServiceClient(conn).Status(ctx, &sigilv1.StatusRequest{})
	if err != nil {
		return err
	}
	v := statusView{
		Version: st.GetVersion(), Initialized: st.GetInitialized(), Sealed: st.GetSealed(),
		Storage: st.GetStorageBackend(), Custody: st.GetCustody(),
		CASubject: st.GetCaSubject(), CANotAfter: unixTime(st.GetCaNotAfterUnix()),
		IntermediateSubject: st.GetIntermediateSubject(), IntermediateNotAfter: unixTime(st.GetIntermediateNotAfterUnix()),
		ClientVersion: version,
	}
	if st.GetSealed() && st.GetUnsealThreshold() > 0 {
		v.UnsealProgress = fmt.Sprintf("%d/%d", st.GetUnsealProgress(), st.GetUnsealThreshold())
	}
	if cf.format == "json" {
		return printJSON(env.stdout, v)
	}
	w := env.stdout
	fmt.Fprintf(w, "Version:       %s\n", v.Version)
	fmt.Fprintf(w, "Initialized:   %t\n", v.Initialized)
	fmt.Fprintf(w, "Sealed:        %t\n", v.Sealed)
	if v.UnsealProgress != "" {
		fmt.Fprintf(w, "Unseal:        %s shares\n", v.UnsealProgress)
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
}
