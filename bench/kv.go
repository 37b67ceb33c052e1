package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/sigil-ca/sigil/barrier"
	"github.com/sigil-ca/sigil/engines/kv"
	"github.com/sigil-ca/sigil/internal/adapt"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
	"github.com/sigil-ca/sigil/storage/sqlite"
)

// KVValueSize is the one field's value in the kv scenarios and ceilings.
const KVValueSize = 1024

// kvGetPath is the secret every kv-get client reads.
const kvGetPath = "bench/get"

// SetupKV enables a kv mount (reusing one that exists) and writes the
// secret kv-get reads.
func SetupKV(ctx context.Context, cc *grpc.ClientConn, mount string, value []byte) error {
	_, err := sigilv1.NewEngineServiceClient(cc).Enable(ctx, &sigilv1.EnableEngineRequest{Type: kv.Type, Mount: mount})
	if err != nil && status.Code(err) != codes.AlreadyExists {
		return fmt.Errorf("enable kv at %s: %w", mount, err)
	}
	if _, err := sigilv1.NewKVServiceClient(cc).Put(ctx, &sigilv1.KVWriteRequest{Mount: mount, Path: kvGetPath,
		Data: map[string][]byte{"value": value}}); err != nil {
		return fmt.Errorf("kv put %s/%s: %w", mount, kvGetPath, err)
	}
	return nil
}

// KVOp is one kv scenario: a put of a KVValueSize value (a new version
// of the worker's own secret, so the mount's max_versions prunes as in
// use), or a get of one secret sealed to the worker's key and opened.
type KVOp struct {
	mount string
	put   bool
	value []byte
	conns []*grpc.ClientConn
	keys  []recipientKey
}

// NewKVOp dials min(conns, workers) connections. value is what kv-get
// expects to read back (and what kv-put writes).
func NewKVOp(c SigilConn, mount string, put bool, value []byte, workers, conns int) (*KVOp, error) {
	s := &KVOp{mount: mount, put: put, value: value}
	var err error
	if !put {
		if s.keys, err = newRecipientKeys(workers); err != nil {
			return nil, err
		}
	}
	if s.conns, err = dialPool(c, workers, conns); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *KVOp) Name() string {
	if s.put {
		return "kv-put"
	}
	return "kv-get"
}

func (s *KVOp) Target() string { return "sigil" }

func (s *KVOp) Do(ctx context.Context, worker int) error {
	c := sigilv1.NewKVServiceClient(s.conns[worker%len(s.conns)])
	if s.put {
		p := fmt.Sprintf("bench/put/w%d", worker)
		if _, err := c.Put(ctx, &sigilv1.KVWriteRequest{Mount: s.mount, Path: p, Data: map[string][]byte{"value": s.value}}); err != nil {
			return fmt.Errorf("kv put %s: %w", p, err)
		}
		return nil
	}
	k := s.keys[worker]
	resp, err := c.Get(ctx, &sigilv1.KVGetRequest{Mount: s.mount, Path: kvGetPath, Recipient: k.pub})
	if err != nil {
		return fmt.Errorf("kv get %s: %w", kvGetPath, err)
	}
	data, err := openData(k.priv, resp.GetEnvelope(), "kv:"+s.mount+"/data/"+kvGetPath)
	if err != nil {
		return fmt.Errorf("kv get %s: %w", kvGetPath, err)
	}
	got, err := base64.StdEncoding.DecodeString(data["value"])
	clear(data)
	if err != nil || !bytes.Equal(got, s.value) {
		return fmt.Errorf("kv get %s: the value read back differs from the one put", kvGetPath)
	}
	return nil
}

func (s *KVOp) Close() error { return closeAll(s.conns) }

// KVBarrierCeiling is the kv scenarios' floor: what a put (encode the
// secret, barrier seal) or a get (barrier open, decode) must do at least,
// in process, with a real barrier unsealed over a fresh SQLite keyring,
// from n goroutines for d.
func KVBarrierCeiling(ctx context.Context, open bool, n int, d time.Duration) (Ceiling, error) {
	dir, err := os.MkdirTemp("", "sigil-bench-kv-")
	if err != nil {
		return Ceiling{}, fmt.Errorf("ceiling: %w", err)
	}
	defer os.RemoveAll(dir)
	st, err := sqlite.Open(ctx, filepath.Join(dir, "sigil.db"), nil)
	if err != nil {
		return Ceiling{}, fmt.Errorf("ceiling: %w", err)
	}
	defer st.Close()
	b := barrier.New(adapt.Keyring(st.Keyring()))
	master := make([]byte, barrier.MasterKeySize)
	_, _ = rand.Read(master)
	if err := b.Unseal(ctx, master); err != nil {
		return Ceiling{}, fmt.Errorf("ceiling: %w", err)
	}
	defer b.Lock()
	value := make([]byte, KVValueSize)
	_, _ = rand.Read(value)
	id := kv.SealID("bench", "bench/ceiling", 1)
	pt, err := json.Marshal(map[string][]byte{"value": value})
	if err != nil {
		return Ceiling{}, err
	}
	sealed, err := b.Seal(ctx, kv.SealKind, id, pt)
	if err != nil {
		return Ceiling{}, fmt.Errorf("ceiling: %w", err)
	}
	if open {
		name := fmt.Sprintf("kv-get: barrier open + decode, 1 KiB, %d goroutines", n)
		return measureLoop(ctx, name, n, d, func(int, int64) error {
			pt, err := b.Open(ctx, kv.SealKind, id, sealed)
			if err != nil {
				return err
			}
			var m map[string][]byte
			return json.Unmarshal(pt, &m)
		})
	}
	name := fmt.Sprintf("kv-put: encode + barrier seal, 1 KiB, %d goroutines", n)
	return measureLoop(ctx, name, n, d, func(int, int64) error {
		pt, err := json.Marshal(map[string][]byte{"value": value})
		if err != nil {
			return err
		}
		_, err = b.Seal(ctx, kv.SealKind, id, pt)
		return err
	})
}

// KVOptions configure RunKV.
type KVOptions struct {
	Conn        SigilConn
	Mount       string
	Rounds      int
	Concurrency []int
	Conns       func(clients int) int
	Run         Options // Concurrency is set per level
	Ceiling     bool
	CeilingFor  time.Duration
	Logf        func(string, ...any)
}

// RunKV runs kv-get then kv-put at every round and client level, each
// beside its in-process barrier ceiling measured right before it.
func RunKV(ctx context.Context, o KVOptions) ([]*Result, []Ceiling, error) {
	cc, err := o.Conn.Dial()
	if err != nil {
		return nil, nil, err
	}
	defer cc.Close()
	value := make([]byte, KVValueSize)
	_, _ = rand.Read(value)
	if err := SetupKV(ctx, cc, o.Mount, value); err != nil {
		return nil, nil, err
	}
	var results []*Result
	var ceilings []Ceiling
	for round := 1; round <= max(o.Rounds, 1); round++ {
		for _, n := range o.Concurrency {
			for _, put := range []bool{false, true} {
				if ctx.Err() != nil {
					return results, ceilings, nil
				}
				var ce *Ceiling
				if o.Ceiling {
					x, err := KVBarrierCeiling(ctx, !put, n, o.CeilingFor)
					if err != nil {
						return results, ceilings, err
					}
					ceilings = append(ceilings, x)
					ce = &x
				}
				sc, err := NewKVOp(o.Conn, o.Mount, put, value, n, o.Conns(n))
				if err != nil {
					return results, ceilings, err
				}
				o.Logf("run: %s against sigil, %d clients, round %d/%d (load %s)", sc.Name(), n, round, o.Rounds, LoadAvg())
				ro := o.Run
				ro.Concurrency = n
				res, err := Run(ctx, sc, ro)
				if cerr := sc.Close(); cerr != nil {
					o.Logf("closing the clients: %v", cerr)
				}
				if err != nil {
					return results, ceilings, fmt.Errorf("%s, %d clients: %w", sc.Name(), n, err)
				}
				if ce != nil && ce.Rate > 0 {
					res.Ceiling = ce
					res.OfCeiling = res.Throughput / ce.Rate
				}
				results = append(results, res)
			}
		}
	}
	return results, ceilings, nil
}
