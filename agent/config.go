package agent

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/sigil-ca/sigil/agent/render"
)

// Load reads agent.yaml: the agent's own keys (server, cacert, data,
// socket, spiffe_id, health_addr, sync_interval) and the secrets-delivery
// keys (templates:, exec:, allow_disk, revoke_on_exit, kv_refresh). An
// unknown key at the top level, in a templates item, in reload: or in
// exec: is an error naming its line and section.
func Load(path string) (Config, error) {
	f, err := os.Open(path)
	if err != nil {
		return Config{}, fmt.Errorf("agent config: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, render.MaxConfigSize+1))
	if err != nil {
		return Config{}, fmt.Errorf("agent config %s: %w", path, err)
	}
	if len(data) > render.MaxConfigSize {
		return Config{}, fmt.Errorf("agent config %s: larger than %d bytes", path, render.MaxConfigSize)
	}
	cfg, err := Parse(data)
	if err != nil {
		return Config{}, fmt.Errorf("agent config %s: %w", path, err)
	}
	return cfg, nil
}

// Parse decodes and validates agent.yaml's contents (see Load).
func Parse(data []byte) (Config, error) {
	var cfg Config
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	if err := dec.Decode(&cfg); err != nil {
		if errors.Is(err, io.EOF) {
			return Config{}, nil
		}
		err = render.UnknownKeyError(err)
		if strings.Contains(err.Error(), `unknown key "join_token" in top level`) {
			// The token would sit in a file for as long as the file does.
			return Config{}, fmt.Errorf("%w: the join token is not read from the file; give --join-token or SIGIL_JOIN_TOKEN", err)
		}
		return Config{}, err
	}
	if cfg.SyncInterval < 0 {
		return Config{}, fmt.Errorf("sync_interval %v: must not be negative", cfg.SyncInterval)
	}
	if err := cfg.Render.Validate(); err != nil {
		return Config{}, err
	}
	return cfg, nil
}
