// Command agentclient is a SPIFFE Workload API client for the agent's e2e
// tests: they run it as other users (and as a binary of known hash), which
// the test process itself cannot be.
//
//	agentclient SOCKET   print the SPIFFE IDs of the X.509-SVIDs received
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: agentclient SOCKET")
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	svids, err := workloadapi.FetchX509SVIDs(ctx, workloadapi.WithAddr("unix://"+os.Args[1]))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	for _, s := range svids {
		fmt.Println(s.ID.String())
	}
}
