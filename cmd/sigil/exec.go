package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/sigil-ca/sigil/agent"
	"github.com/sigil-ca/sigil/agent/render"
)

// renderLogger logs the renderer's events to stderr at level (warn by
// default: a wrapped command's own output stays readable).
func renderLogger(env *cliEnv, level string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, usagef("--log-level %q: use debug, info, warn or error", level)
	}
	return slog.New(slog.NewTextHandler(env.stderr, &slog.HandlerOptions{Level: l})), nil
}

// envFlags collects repeated --env NAME=TEMPLATE.
type envFlags map[string]string

func (e envFlags) String() string { return "" }

func (e envFlags) Set(s string) error {
	name, tmpl, ok := strings.Cut(s, "=")
	if !ok || name == "" {
		return errors.New("want NAME=TEMPLATE")
	}
	if _, dup := e[name]; dup {
		return fmt.Errorf("%s given twice", name)
	}
	e[name] = tmpl
	return nil
}

// loadRenderConfig reads agent.yaml (one schema for the agent, sigil
// exec and sigil agent render) and returns its secrets-delivery part.
func loadRenderConfig(path string) (render.Config, error) {
	cfg, err := agent.Load(path)
	if err != nil {
		return render.Config{}, err
	}
	return cfg.Render, nil
}

func runExec(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	usage := "sigil exec [--config FILE] [--env NAME=TEMPLATE ...] -- CMD [ARGS...]"
	fs := newFlagSet(env, "exec", usage)
	cf.register(fs, env)
	config := fs.String("config", "", "agent.yaml whose exec: section gives environment templates (and a command); templates: are not rendered")
	envs := envFlags{}
	fs.Var(envs, "env", "`NAME=TEMPLATE`: an environment variable rendered for CMD, e.g. DB_PASSWORD='{{ with creds \"db/app\" }}{{ .password }}{{ end }}' (repeatable)")
	logLevel := fs.String("log-level", "warn", "what the renderer logs to stderr: debug, info, warn or error")
	var lf loginFlags
	lf.register(fs, env)
	// Everything after "--" (or the first non-flag) is the command, flags
	// and all.
	var command []string
	flagArgs := args
	for i, a := range args {
		if a == "--" {
			flagArgs, command = args[:i], args[i+1:]
			break
		}
	}
	// As parseFlags, but flags stop at the command: its own flags are its.
	help := fs.Usage
	fs.Usage = func() {}
	err := fs.Parse(flagArgs)
	fs.Usage = help
	if errors.Is(err, flag.ErrHelp) {
		help()
		return errHelp
	} else if err != nil {
		return flagUsageError(fs, err)
	}
	if command == nil {
		command = fs.Args()
	} else if fs.NArg() > 0 {
		return usagef("exec: %q before -- is not a flag; put the command after --", fs.Arg(0))
	}
	log, err := renderLogger(env, *logLevel)
	if err != nil {
		return err
	}
	var cfg render.Config
	if *config != "" {
		if cfg, err = loadRenderConfig(*config); err != nil {
			return err
		}
	}
	// exec writes nothing to disk: the file templates are the agent's.
	cfg.Templates = nil
	if cfg.Exec == nil {
		cfg.Exec = &render.Exec{}
	}
	if cfg.Exec.Env == nil {
		cfg.Exec.Env = map[string]string{}
	}
	for k, v := range envs {
		cfg.Exec.Env[k] = v
	}
	if len(command) > 0 {
		cfg.Exec.Command = command
	}
	if len(cfg.Exec.Command) == 0 {
		return usagef("exec: no command: give it after --, or as exec.command in --config")
	}
	cfg.Exec.Stdin, cfg.Exec.Stdout, cfg.Exec.Stderr = env.stdin, env.stdout, env.stderr
	if err := cfg.Validate(); err != nil {
		return usagef("%v", err)
	}
	if err := cf.validate(); err != nil {
		return err
	}
	conn, ctx, done, err := dialWithLogin(ctx, &cf, &lf, log)
	if err != nil {
		return err
	}
	defer done()
	err = render.Run(ctx, cfg, render.NewGRPCSource(conn), log)
	var ee *render.ExitError
	if errors.As(err, &ee) {
		if ee.Code == 0 {
			return nil
		}
		return &exitError{code: ee.Code}
	}
	return err
}

func runRender(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "agent render", "sigil agent render --config FILE [--once]")
	cf.register(fs, env)
	config := fs.String("config", "", "agent.yaml with templates: (and optionally exec:)")
	once := fs.Bool("once", false, "render the files once and exit, leaving their leases to run their course (no renewal, no revocation)")
	logLevel := fs.String("log-level", "info", "what to log to stderr: debug, info, warn or error")
	var lf loginFlags
	lf.register(fs, env)
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := checkArgs(fs, 0, 0); err != nil {
		return err
	}
	if *config == "" {
		return usagef("--config is required")
	}
	log, err := renderLogger(env, *logLevel)
	if err != nil {
		return err
	}
	cfg, err := loadRenderConfig(*config)
	if err != nil {
		return err
	}
	if len(cfg.Templates) == 0 && (cfg.Exec == nil || *once) {
		return usagef("%s has no templates to render", *config)
	}
	if err := cf.validate(); err != nil {
		return err
	}
	conn, ctx, done, err := dialWithLogin(ctx, &cf, &lf, log)
	if err != nil {
		return err
	}
	defer done()
	src := render.NewGRPCSource(conn)
	// SIGHUP would end the process uncleanly (leases left, files kept);
	// note it instead. Caught, not ignored: ignoring would be inherited by
	// reload commands.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer func() { signal.Stop(hup); close(hup) }()
	go func() {
		for range hup {
			log.Warn("SIGHUP ignored: restart sigil agent render to load a changed configuration")
		}
	}()
	if *once {
		return render.RenderOnce(ctx, cfg, src, log)
	}
	err = render.Run(ctx, cfg, src, log)
	var ee *render.ExitError
	if errors.As(err, &ee) && ee.Code != 0 {
		return &exitError{code: ee.Code}
	} else if ee != nil {
		return nil
	}
	return err
}
