package authz_test

import (
	"regexp"
	"slices"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	"github.com/sigil-ca/sigil/authz/authztest"
	"github.com/sigil-ca/sigil/ca"
	"github.com/sigil-ca/sigil/core"
	"github.com/sigil-ca/sigil/engines/kv"
	"github.com/sigil-ca/sigil/engines/transit"
	"github.com/sigil-ca/sigil/internal/errs"
	"github.com/sigil-ca/sigil/policy"
	sigilv1 "github.com/sigil-ca/sigil/proto/sigil/v1"
)

// templatePattern is the regular expression of the paths a path template
// may produce: its literal text, and for each placeholder one name segment
// or, for the rules that allow it, several; a kv list prefix may be empty,
// taking the "/" before it along.
func templatePattern(tmpl string) *regexp.Regexp {
	const seg, segs = `[^/]+`, `[^/]+(?:/[^/]+)*`
	var b strings.Builder
	b.WriteString("^")
	for rest := tmpl; rest != ""; {
		lit, ph, _ := strings.Cut(rest, "{")
		ph, rest, _ = strings.Cut(ph, "}")
		_, rule, _ := strings.Cut(ph, ":")
		switch {
		case rule == "kv-prefix":
			b.WriteString(regexp.QuoteMeta(strings.TrimSuffix(lit, "/")) + "(?:/" + segs + ")?")
			continue
		case slices.Contains([]string{"", "mount", "admin-mount", "kv-path", "spiffe-id"}, rule) && ph != "":
			lit += "\x00" + segs
		case ph != "":
			lit += "\x00" + seg
		}
		l, p, _ := strings.Cut(lit, "\x00")
		b.WriteString(regexp.QuoteMeta(l) + p)
	}
	return regexp.MustCompile(b.String() + "$")
}

// FuzzAuthzPaths sets the string fields of every path method's sample to
// hostile values and checks what the table makes of them: refused as an
// invalid argument (or the internal mount as a failed precondition), or a
// path of the declared template's shape with no empty, "." or ".."
// segment, so no field value moves a path out of its template.
func FuzzAuthzPaths(f *testing.F) {
	for _, v := range []string{"", "..", "../x", "a/../b", "a//b", "/a", "a/", "*", "auth", "spiffe://sigil.test/../x", "x\x00y"} {
		f.Add(v, "r")
		f.Add("m", v)
	}
	table := loadTable(f)
	samples := authztest.Samples()
	f.Fuzz(func(t *testing.T, a, b string) {
		for m, sample := range samples {
			desc, err := protoregistry.GlobalFiles.FindDescriptorByName(protoreflect.FullName(strings.ReplaceAll(strings.TrimPrefix(m, "/"), "/", ".")))
			if err != nil {
				t.Fatal(err)
			}
			access, _ := proto.GetExtension(desc.(protoreflect.MethodDescriptor).Options(), sigilv1.E_Access).(*sigilv1.Access)
			if access.GetKind() != sigilv1.Access_PATH {
				continue
			}
			req := proto.Clone(sample).ProtoReflect()
			vals := []string{a, b}
			for i, fields := 0, req.Descriptor().Fields(); i < fields.Len() && len(vals) > 0; i++ {
				if fd := fields.Get(i); fd.Kind() == protoreflect.StringKind && !fd.IsList() {
					req.Set(fd, protoreflect.ValueOfString(vals[0]))
					vals = vals[1:]
				}
			}
			_, _, path, _, err := eval(table, m, req.Interface())
			if err != nil {
				if k := errs.KindOf(err); k != errs.InvalidArgument && !(k == errs.FailedPrecondition && strings.Contains(access.GetPath(), "admin-mount")) {
					t.Errorf("%s %v: %v (%v), want invalid argument", m, req, err, k)
				}
				continue
			}
			tmpl := access.GetPath()
			if m == sigilv1.KVService_Delete_FullMethodName && len(req.Interface().(*sigilv1.KVVersionsRequest).GetVersions()) > 0 {
				tmpl = strings.Replace(tmpl, "/data/", "/delete/", 1)
			}
			if !templatePattern(tmpl).MatchString(path) {
				t.Errorf("%s %v: path %q is not of the shape %q", m, req, path, tmpl)
			}
			for seg := range strings.SplitSeq(path, "/") {
				if seg == "" || seg == "." || seg == ".." {
					t.Errorf("%s %v: path %q has an empty, \".\" or \"..\" segment", m, req, path)
				}
			}
		}
	})
}

// TestAuthzSizeLimitsFitTheDomain: the size limits declared in the .proto
// files are literal numbers; each must still admit the largest input its
// domain accepts, and none may exceed what the server reads at all.
func TestAuthzSizeLimitsFitTheDomain(t *testing.T) {
	table := loadTable(t)
	for m, least := range map[string]int{
		sigilv1.KVService_Put_FullMethodName:                kv.MaxMaxValueBytes,
		sigilv1.KVService_Patch_FullMethodName:              kv.MaxMaxValueBytes,
		sigilv1.TransitService_Encrypt_FullMethodName:       transit.MaxBatchBytes,
		sigilv1.TransitService_Decrypt_FullMethodName:       transit.MaxBatchBytes,
		sigilv1.TransitService_Rewrap_FullMethodName:        transit.MaxBatchBytes,
		sigilv1.TransitService_Sign_FullMethodName:          transit.MaxInput,
		sigilv1.TransitService_Verify_FullMethodName:        transit.MaxInput,
		sigilv1.TransitService_HMAC_FullMethodName:          transit.MaxInput,
		sigilv1.TransitService_VerifyHMAC_FullMethodName:    transit.MaxInput,
		sigilv1.CAService_ImportIntermediate_FullMethodName: core.MaxChainPEM,
		sigilv1.CAService_Sign_FullMethodName:               ca.MaxCSRSize,
		sigilv1.IdentityService_Enroll_FullMethodName:       ca.MaxCSRSize,
		sigilv1.PolicyService_Write_FullMethodName:          policy.MaxDocumentSize,
		sigilv1.PolicyService_Test_FullMethodName:           policy.MaxDocumentSize,
	} {
		if got := table.MaxRequest(m); got <= least || got > maxMessage {
			t.Errorf("%s: limit %d, want above %d and at most %d", m, got, least, maxMessage)
		}
	}
}
