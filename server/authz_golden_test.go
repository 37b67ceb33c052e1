package server_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"

	"github.com/sigil-ca/sigil/internal/errs"
	"github.com/sigil-ca/sigil/internal/testharness"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
	"github.com/sigil-ca/sigil/server"
)

// authzHostile are path components an attacker might send: empty, dot
// segments, extra slashes, globs, the internal mount's name.
var authzHostile = []string{"", ".", "..", "../x", "../", "a/b", "a/../b", "a/./b/", "a//b", "/a", "a/", "a//", "*", "auth", "sys", "a b", "spiffe://sigil.test/a/b"}

// authzPairHostile are the values tried in pairs of fields, for the order
// in which a rule checks its components (which error a request with two
// bad ones gets).
var authzPairHostile = []string{"", "../x", "a/b", "auth"}

// authzGoldenExtra are samples beyond authzSamples for rules that read
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
func authzGoldenLines(t *testing.T, s *server.Server) []string {
	t.Helper()
	result := func(m string, req proto.Message) string {
		_, _, p, c, err := server.AuthzEval(s, m, req)
		if err != nil {
			return fmt.Sprintf("%s: %s", errs.KindOf(err), err.Error())
		}
		return fmt.Sprintf("path=%s cap=%s", p, c)
	}
	var lines []string
	methods := server.RegisteredMethods(s)
	slices.Sort(methods)
	samples, extra := authzSamples(), authzGoldenExtra()
	for _, m := range methods {
		kind, reason, _, _, _ := server.AuthzEval(s, m, nil)
		lines = append(lines, fmt.Sprintf("%s kind=%s reason=%q max=%d", m, kind, reason, server.MaxRequestSize(m)))
		if kind != "path" {
			continue
		}
		if authzServerStreaming[m] {
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
	s := testharness.StartSigil(t, testharness.SigilOptions{})
	got := authzGoldenLines(t, s.Server)
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
