package slapd

import (
	"os/exec"
	"strings"
	"testing"
)

// TestStartServesDirectory checks the harness with the OpenLDAP client
// tools: the service account reads alice's groups, anonymous reads nothing,
// and the server is gone after Stop.
func TestStartServesDirectory(t *testing.T) {
	s := ForTest(t)
	out, err := exec.Command("ldapsearch", "-x", "-H", s.URL(), "-D", BindDN, "-w", BindPassword,
		"-b", PeopleDN, "(uid=alice)", "memberOf").CombinedOutput()
	if err != nil {
		t.Fatalf("ldapsearch: %v\n%s\n%s", err, out, s.Log())
	}
	if !strings.Contains(string(out), "memberOf: "+GroupDN("ops")) {
		t.Fatalf("alice has no memberOf ops:\n%s", out)
	}
	out, _ = exec.Command("ldapsearch", "-x", "-H", s.URL(), "-b", PeopleDN, "(uid=alice)").CombinedOutput()
	if strings.Contains(string(out), "dn: uid=alice") {
		t.Fatalf("anonymous search read alice:\n%s", out)
	}
	s.Stop()
	if dialOK(s.port) {
		t.Fatal("slapd still listening after Stop")
	}
}
