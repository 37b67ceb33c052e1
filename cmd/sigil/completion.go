package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"regexp"
	"sort"
	"strings"
)

// The scripts ask the binary itself (`sigil __complete WORDS... CURRENT`)
// so completion follows the command tree without being regenerated.
const bashCompletion = `# bash completion for sigil: source <(sigil completion bash)
_sigil() {
  local IFS=$'\n'
  COMPREPLY=($(compgen -W "$(sigil __complete "${COMP_WORDS[@]:1:COMP_CWORD}" 2>/dev/null)" -- "${COMP_WORDS[COMP_CWORD]}"))
}
complete -o default -F _sigil sigil
`

const zshCompletion = `#compdef sigil
# zsh completion for sigil: source <(sigil completion zsh), after compinit
_sigil() {
  local -a cands
  cands=(${(f)"$(sigil __complete "${(@)words[2,CURRENT]}" 2>/dev/null)"})
  compadd -- $cands
}
compdef _sigil sigil
`

const fishCompletion = `# fish completion for sigil: sigil completion fish | source
complete -c sigil -f -a '(sigil __complete (commandline -opc)[2..-1] (commandline -ct))'
`

func runCompletion(_ context.Context, env *cliEnv, args []string) error {
	fs := newFlagSet(env, "completion", "sigil completion bash|zsh|fish")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return usagef("completion takes one shell: bash, zsh or fish")
	}
	scripts := map[string]string{"bash": bashCompletion, "zsh": zshCompletion, "fish": fishCompletion}
	s, ok := scripts[fs.Arg(0)]
	if !ok {
		msg := fmt.Sprintf("no completion for shell %q: use bash, zsh or fish", fs.Arg(0))
		if g := suggest(fs.Arg(0), []string{"bash", "zsh", "fish"}); g != "" {
			msg += fmt.Sprintf("; did you mean %q?", g)
		}
		return usagef("%s", msg)
	}
	_, err := io.WriteString(env.stdout, s)
	return err
}

// helpFlag matches a flag line of printFlagHelp.
var helpFlag = regexp.MustCompile(`(?m)^  (--[a-z0-9-]+)`)

// runComplete prints the candidates for the last word, given the words
// before it: subcommands inside a group, flags (and subcommands) at a leaf.
func runComplete(ctx context.Context, env *cliEnv, words []string) error {
	cur := ""
	if len(words) > 0 {
		cur, words = words[len(words)-1], words[:len(words)-1]
	}
	c, path := commands(), "sigil"
	for _, w := range words {
		if strings.HasPrefix(w, "-") {
			continue
		}
		sub := c.find(w)
		if sub == nil {
			break
		}
		c, path = sub, path+" "+sub.name
	}
	var cands []string
	if c.run == nil || (len(c.sub) > 0 && !strings.HasPrefix(cur, "-")) {
		// A group, or a command that runs and has subcommands too
		// (sigil agent): its subcommands.
		for _, s := range c.sub {
			cands = append(cands, s.name)
		}
	} else if c.name == "completion" {
		cands = []string{"bash", "zsh", "fish"}
	} else if strings.HasPrefix(cur, "-") {
		// A leaf's flags are what its --help lists; the help run has no
		// connection and shows no secret.
		var out bytes.Buffer
		henv := &cliEnv{stdout: &out, stderr: io.Discard, stdin: strings.NewReader(""), getenv: func(string) string { return "" }, path: path, summary: c.summary}
		_ = c.run(ctx, henv, []string{"--help"})
		for _, m := range helpFlag.FindAllStringSubmatch(out.String(), -1) {
			cands = append(cands, m[1])
		}
	}
	sort.Strings(cands)
	for _, s := range cands {
		if strings.HasPrefix(s, cur) && s != "__complete" {
			fmt.Fprintln(env.stdout, s)
		}
	}
	return nil
}
