package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"google.golang.org/grpc"

	"github.com/sigil-ca/sigil/config"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
	"github.com/sigil-ca/sigil/snapshot"
)

// snapshotCommands are `sigil operator snapshot save|restore|inspect`.
func snapshotCommands() []*command {
	return []*command{
		{name: "save", summary: "back up the embedded database of a running server: sigil operator snapshot save FILE", run: runSnapshotSave},
		{name: "restore", summary: "install a snapshot as a stopped node's database: sigil operator snapshot restore FILE --data DIR | --config FILE", run: runSnapshotRestore},
		{name: "inspect", summary: "check a snapshot file completely and print its header: sigil operator snapshot inspect FILE", run: runSnapshotInspect},
	}
}

// snapshotTimeout bounds a save: a large database takes minutes to copy
// and stream, not hours.
const snapshotTimeout = time.Hour

func runSnapshotSave(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "operator snapshot save", "sigil operator snapshot save FILE")
	cf.register(fs, env)
	return call(ctx, fs, &cf, args, 1, 1, snapshotTimeout, func(ctx context.Context, conn *grpc.ClientConn) error {
		path := fs.Arg(0)
		if _, err := os.Stat(path); err == nil {
			return usagef("%s exists: snapshot save does not overwrite; choose another FILE", path)
		}
		// Written beside FILE and renamed once complete and verified, so
		// FILE is always a whole snapshot.
		partial := path + ".partial"
		f, err := os.OpenFile(partial, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if err != nil {
			return fmt.Errorf("snapshot save: %w", err)
		}
		ok := false
		defer func() {
			if !ok {
				f.Close()
				os.Remove(partial)
			}
		}()
		stream, err := sigilv1.NewSnapshotServiceClient(conn).Save(ctx, &sigilv1.SnapshotSaveRequest{})
		if err != nil {
			return err
		}
		for {
			chunk, err := stream.Recv()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				return err
			}
			if _, err := f.Write(chunk.GetData()); err != nil {
				return fmt.Errorf("snapshot save: write %s: %w", partial, err)
			}
		}
		if err := f.Sync(); err != nil {
			return fmt.Errorf("snapshot save: %w", err)
		}
		if err := f.Close(); err != nil {
			return fmt.Errorf("snapshot save: %w", err)
		}
		hdr, err := snapshot.Verify(ctx, partial)
		if err != nil {
			return fmt.Errorf("snapshot save: the received snapshot does not verify: %w", err)
		}
		if err := os.Rename(partial, path); err != nil {
			return fmt.Errorf("snapshot save: %w", err)
		}
		ok = true
		return cf.output(snapshotJSON(path, hdr, ""), func(w io.Writer) error {
			_, err := fmt.Fprintf(w, "saved %s: %d bytes of database, schema %d, sha256 %s\n", path, hdr.Size, hdr.SchemaVersion, hdr.SHA256)
			return err
		})
	})
}

func runSnapshotRestore(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "operator snapshot restore", "sigil operator snapshot restore FILE --data DIR | --config FILE")
	fs.StringVar(&cf.format, "format", "text", "output format: text or json")
	data := fs.String("data", "", "data directory of the stopped node to restore into (the server's --data / data_dir)")
	cfgPath := fs.String("config", "", "the node's configuration file, to take data_dir from it instead of --data")
	cf.env = env
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := checkArgs(fs, 1, 1); err != nil {
		return err
	}
	dir := *data
	switch {
	case dir != "" && *cfgPath != "":
		return usagef("give --data or --config, not both")
	case *cfgPath != "":
		cfg, err := config.LoadFile(*cfgPath, config.Default())
		if err != nil {
			return err
		}
		if cfg.StorageBackend() != "sqlite" {
			return fmt.Errorf("%s stores its data in PostgreSQL (storage): restore the database with pg_restore or from a base backup instead; see docs/operations.md", *cfgPath)
		}
		dir = cfg.DataDir
	case dir == "":
		// Restoring under a running server would pull its database from
		// under its caches and unsealed keyring; it is done offline.
		return usagef("name the stopped node's data directory with --data DIR (or --config FILE): restore replaces the database of a node that is not running; start it afterwards and unseal it with the original shares")
	}
	res, err := snapshot.Restore(ctx, fs.Arg(0), dir)
	if err != nil {
		return err
	}
	return cf.output(snapshotJSON(res.DB, res.Header, res.Previous), func(w io.Writer) error {
		fmt.Fprintf(w, "restored %s into %s (written by sigil %s at %s, schema %d)\n", fs.Arg(0), res.DB, res.Header.Version,
			res.Header.CreatedAt.Format(time.RFC3339), res.Header.SchemaVersion)
		if res.Previous != "" {
			fmt.Fprintf(w, "the previous database was kept as %s\n", res.Previous)
		}
		_, err := fmt.Fprintln(w, "start the server and unseal it with the shares (or HSM) of the node the snapshot came from")
		return err
	})
}

func runSnapshotInspect(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "operator snapshot inspect", "sigil operator snapshot inspect FILE")
	fs.StringVar(&cf.format, "format", "text", "output format: text or json")
	cf.env = env
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	if err := checkArgs(fs, 1, 1); err != nil {
		return err
	}
	hdr, err := snapshot.Verify(ctx, fs.Arg(0))
	if err != nil {
		return err
	}
	return cf.output(snapshotJSON(fs.Arg(0), hdr, ""), func(w io.Writer) error {
		_, err := fmt.Fprintf(w, "%s: valid snapshot, written by sigil %s at %s, schema %d, %d bytes of database, sha256 %s\n",
			fs.Arg(0), hdr.Version, hdr.CreatedAt.Format(time.RFC3339), hdr.SchemaVersion, hdr.Size, hdr.SHA256)
		return err
	})
}

func snapshotJSON(path string, hdr snapshot.Header, previous string) map[string]any {
	m := map[string]any{"file": path, "format": hdr.Format, "sigil_version": hdr.Version, "created_at": hdr.CreatedAt,
		"schema_version": hdr.SchemaVersion, "size": hdr.Size, "sha256": hdr.SHA256}
	if previous != "" {
		m["previous"] = previous
	}
	return m
}
