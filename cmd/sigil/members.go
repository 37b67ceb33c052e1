package main

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"google.golang.org/grpc"

	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// runOperatorMembers lists the nodes of the cluster (issue 18): every
// `sigil server` registered in the shared PostgreSQL database, with the
// age of its last heartbeat.
func runOperatorMembers(ctx context.Context, env *cliEnv, args []string) error {
	var cf clientFlags
	fs := newFlagSet(env, "operator members", "sigil operator members  (the nodes sharing this server's database)")
	cf.register(fs, env)
	return call(ctx, fs, &cf, args, 0, 0, 30*time.Second, func(ctx context.Context, conn *grpc.ClientConn) error {
		resp, err := sigilv1.NewClusterServiceClient(conn).Members(ctx, &sigilv1.MembersRequest{})
		if err != nil {
			return err
		}
		type member struct {
			ID            string `json:"id"`
			GRPCAddr      string `json:"grpc_addr"`
			HTTPSAddr     string `json:"https_addr"`
			PublicURL     string `json:"public_url"`
			Version       string `json:"version"`
			Sealed        bool   `json:"sealed"`
			StartedAt     string `json:"started_at"`
			LastHeartbeat string `json:"last_heartbeat"`
			Stale         bool   `json:"stale"`
			Self          bool   `json:"self"`
		}
		ts := func(u int64) string { return time.Unix(u, 0).UTC().Format(time.RFC3339) }
		out := make([]member, 0, len(resp.GetMembers()))
		for _, m := range resp.GetMembers() {
			out = append(out, member{ID: m.GetId(), GRPCAddr: m.GetGrpcAddr(), HTTPSAddr: m.GetHttpsAddr(), PublicURL: m.GetPublicUrl(),
				Version: m.GetVersion(), Sealed: m.GetSealed(), StartedAt: ts(m.GetStartedAtUnix()),
				LastHeartbeat: ts(m.GetLastHeartbeatUnix()), Stale: m.GetStale(), Self: m.GetSelf()})
		}
		return cf.output(map[string]any{"members": out, "stale_after_seconds": resp.GetStaleAfterSeconds()}, func(w io.Writer) error {
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tGRPC\tHTTPS\tVERSION\tSEALED\tLAST HEARTBEAT\tSTATE")
			now := time.Now()
			for _, m := range resp.GetMembers() {
				state := "alive"
				if m.GetStale() {
					state = "stale"
				}
				if m.GetSelf() {
					state += " (this node)"
				}
				age := now.Sub(time.Unix(m.GetLastHeartbeatUnix(), 0)).Round(time.Second)
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%v\t%s ago\t%s\n", m.GetId(), m.GetGrpcAddr(), m.GetHttpsAddr(), m.GetVersion(), m.GetSealed(), max(age, 0), state)
			}
			return tw.Flush()
		})
	})
}
