package authz_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	reflectionv1 "google.golang.org/grpc/reflection/grpc_reflection_v1"
	reflectionv1alpha "google.golang.org/grpc/reflection/grpc_reflection_v1alpha"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/sigil-ca/sigil/authz"
	"github.com/sigil-ca/sigil/authz/authztest"
	"github.com/sigil-ca/sigil/internal/errs"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// maxMessage is the bound the server loads the table with (its receive
// limit, maxGRPCMessage in server/gate.go).
const maxMessage = 5 << 20

// loadTable is the table as the server loads it.
func loadTable(t testing.TB) *authz.Table {
	t.Helper()
	table, err := authz.Load(nil, maxMessage)
	if err != nil {
		t.Fatal(err)
	}
	return table
}

// servedMethods are the methods the server serves: every rpc of the
// sigil.v1 services, and the health and reflection services it registers
// beside them (server's TestAuthzTableCoversEveryMethod checks the table
// against what a running server registers).
func servedMethods() []string {
	var out []string
	add := func(f protoreflect.FileDescriptor) {
		for i := range f.Services().Len() {
			svc := f.Services().Get(i)
			for j := range svc.Methods().Len() {
				out = append(out, "/"+string(svc.FullName())+"/"+string(svc.Methods().Get(j).Name()))
			}
		}
	}
	protoregistry.GlobalFiles.RangeFilesByPackage("sigil.v1", func(f protoreflect.FileDescriptor) bool {
		add(f)
		return true
	})
	for _, f := range []protoreflect.FileDescriptor{healthpb.File_grpc_health_v1_health_proto,
		reflectionv1.File_grpc_reflection_v1_reflection_proto, reflectionv1alpha.File_grpc_reflection_v1alpha_reflection_proto} {
		add(f)
	}
	return out
}

// eval applies method's rule to req as Check does, without a caller: the
// rule's kind and reason and, for a path rule, the path and capability
// computed from req or the error the request is refused with (all empty
// for a method without a rule).
func eval(table *authz.Table, method string, req any) (kind, reason, path, capability string, err error) {
	r, ok := table.Rule(method)
	if !ok {
		return "", "", "", "", nil
	}
	if r.Kind != sigilv1.Access_PATH {
		return authztest.KindName(r.Kind), r.Reason, "", "", nil
	}
	p, c, err := r.Resolve(req)
	if err != nil {
		return authztest.KindName(r.Kind), r.Reason, "", "", err
	}
	return authztest.KindName(r.Kind), r.Reason, p, string(c), nil
}

// authzHostile are path components an attacker might send: empty, dot
// segments, extra slashes, globs, the internal mount's name.
var authzHostile = []string{"", ".", "..", "../x", "../", "a/b", "a/../b", "a/./b/", "a//b", "/a", "a/", "a//", "*", "auth", "sys", "a b", "spiffe://sigil.test/a/b"}

// authzPairHostile are the values tried in pairs of fields, for the order
// in which a rule checks its components (which error a request with two
// bad ones gets).
var authzPairHostile = []string{"", "../x", "a/b", "auth"}

// authzGoldenExtra are samples beyond authztest.Samples for rules that read
// more than strings (kv delete reads whether versions are given).
func authzGoldenExtra() map[string][]proto.Message {
	return map[string][]proto.Message{
		sigilv1.KVService_Delete_FullMethodName:           {&sigilv1.KVVersionsRequest{Mount: "authz-m", Path: "a/b", Versions: []int64{1}}},
		sigilv1.KVService_Undelete_FullMethodName:         {&sigilv1.KVVersionsRequest{Mount: "authz-m", Path: "a/b"}},
		sigilv1.CAService_SignIntermediate_FullMethodName: {&sigilv1.SignIntermediateRequest{Profile: "other"}},
	}
}

// authzGoldenLines describes the whole authorization table as text: for
// every registered method its rule kind, reason and request size limit;
// for every path rule the (path, capability) of each sample, and what each
// hostile value in each string field, and in each pair of fields that
// matter, turns that into (a line only where the result differs from the
// sample's; for a pair, which field's own result it equals, which pins the
// order a rule checks its components in).
func authzGoldenLines(t *testing.T, table *authz.Table) []string {
	t.Helper()
	result := func(m string, req proto.Message) string {
		_, _, p, c, err := eval(table, m, req)
		if err != nil {
			return fmt.Sprintf("%s: %s", errs.KindOf(err), err.Error())
		}
		return fmt.Sprintf("path=%s cap=%s", p, c)
	}
	var lines []string
	methods := servedMethods()
	slices.Sort(methods)
	samples, extra := authztest.Samples(), authzGoldenExtra()
	for _, m := range methods {
		kind, reason, _, _, _ := eval(table, m, nil)
		lines = append(lines, fmt.Sprintf("%s kind=%s reason=%q max=%d", m, kind, reason, table.MaxRequest(m)))
		if kind != "path" {
			continue
		}
		if authztest.ServerStreaming(m) {
			lines = append(lines, fmt.Sprintf("%s  nil -> %s", m, result(m, nil)))
		}
		for _, sample := range append([]proto.Message{samples[m]}, extra[m]...) {
			base := result(m, sample)
			lines = append(lines, fmt.Sprintf("%s  sample %s -> %s", m, authzSampleText(sample), base))
			fields := sample.ProtoReflect().Descriptor().Fields()
			var strs []protoreflect.FieldDescriptor
			for i := range fields.Len() {
				if f := fields.Get(i); f.Kind() == protoreflect.StringKind && !f.IsList() && !f.IsMap() {
					strs = append(strs, f)
				}
			}
			with := func(vals map[protoreflect.FieldDescriptor]string) proto.Message {
				r := proto.Clone(sample)
				for f, v := range vals {
					r.ProtoReflect().Set(f, protoreflect.ValueOfString(v))
				}
				return r
			}
			var relevant []protoreflect.FieldDescriptor
			for _, f := range strs {
				matters := false
				for _, v := range authzHostile {
					if got := result(m, with(map[protoreflect.FieldDescriptor]string{f: v})); got != base {
						matters = true
						lines = append(lines, fmt.Sprintf("%s    %s=%q -> %s", m, f.Name(), v, got))
					}
				}
				if matters {
					relevant = append(relevant, f)
				}
			}
			for i, f := range relevant {
				for _, g := range relevant[i+1:] {
					for _, v := range authzPairHostile {
						for _, w := range authzPairHostile {
							got := result(m, with(map[protoreflect.FieldDescriptor]string{f: v, g: w}))
							asF := got == result(m, with(map[protoreflect.FieldDescriptor]string{f: v}))
							asG := got == result(m, with(map[protoreflect.FieldDescriptor]string{g: w}))
							switch {
							case asF && asG:
								continue
							case asF:
								got = "as " + string(f.Name()) + " alone"
							case asG:
								got = "as " + string(g.Name()) + " alone"
							}
							lines = append(lines, fmt.Sprintf("%s    %s=%q %s=%q -> %s", m, f.Name(), v, g.Name(), w, got))
						}
					}
				}
			}
		}
	}
	return lines
}

// authzSampleText is sample's set fields in field order: prototext's
// output is deliberately unstable across builds, so it cannot be golden.
func authzSampleText(sample proto.Message) string {
	var out []string
	msg := sample.ProtoReflect()
	fields := msg.Descriptor().Fields()
	for i := range fields.Len() {
		f := fields.Get(i)
		if !msg.Has(f) {
			continue
		}
		v := msg.Get(f)
		switch {
		case f.IsList():
			var items []string
			for j := range v.List().Len() {
				items = append(items, fmt.Sprintf("%q", fmt.Sprint(v.List().Get(j).Interface())))
			}
			out = append(out, fmt.Sprintf("%s:[%s]", f.Name(), strings.Join(items, " ")))
		default:
			out = append(out, fmt.Sprintf("%s:%q", f.Name(), fmt.Sprint(v.Interface())))
		}
	}
	return "{" + strings.Join(out, " ") + "}"
}

// TestAuthzGolden pins the authorization table's behaviour, generated
// from the table as it was when the table was Go code: any change to a
// rule's kind, reason, size limit, computed path or capability, or to the
// error a bad path component gets, fails here.
func TestAuthzGolden(t *testing.T) {
	got := authzGoldenLines(t, loadTable(t))
	want := authzGolden
	for i := range max(len(got), len(want)) {
		var g, w string
		if i < len(got) {
			g = got[i]
		}
		if i < len(want) {
			w = want[i]
		}
		if g != w {
			t.Errorf("line %d:\n got  %s\n want %s", i+1, g, w)
		}
	}
}
