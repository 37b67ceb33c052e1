package check

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/sigil-ca/sigil/config"
)

const chartDir = "../sigil"

// helmBin is helm, built once by TestMain from the Go module this module
// requires (go.mod's tool directive pins helm.sh/helm/v4).
var helmBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "sigil-helm-check-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	helmBin = filepath.Join(dir, "helm")
	cmd := exec.Command("go", "build", "-o", helmBin, "helm.sh/helm/v4/cmd/helm")
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "build helm:", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

func buildHelm(t *testing.T) string { t.Helper(); return helmBin }

func helm(t *testing.T, bin string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(bin, args...)
	// No user configuration, repositories or caches from the machine.
	home := t.TempDir()
	cmd.Env = append(os.Environ(), "HELM_CONFIG_HOME="+home, "HELM_CACHE_HOME="+home, "HELM_DATA_HOME="+home, "KUBECONFIG="+filepath.Join(home, "none"))
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	if err != nil {
		return out.String() + errb.String(), err
	}
	return out.String(), nil
}

// serviceMonitor is the part of monitoring.coreos.com/v1 ServiceMonitor
// the chart writes (its types live in the Prometheus operator's module,
// not k8s.io/api); decoding is strict, so a misspelt field fails.
type serviceMonitor struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata"`
	Spec              struct {
		Selector  metav1.LabelSelector `json:"selector"`
		Endpoints []struct {
			Port      string `json:"port"`
			Scheme    string `json:"scheme"`
			Path      string `json:"path"`
			Interval  string `json:"interval"`
			TLSConfig struct {
				ServerName string `json:"serverName"`
				CA         struct {
					Secret corev1.SecretKeySelector `json:"secret"`
				} `json:"ca"`
			} `json:"tlsConfig"`
		} `json:"endpoints"`
	} `json:"spec"`
}

// rendered is one values case's manifests, decoded.
type rendered struct {
	configMaps   map[string]*corev1.ConfigMap
	secrets      map[string]*corev1.Secret
	services     map[string]*corev1.Service
	statefulSets []*appsv1.StatefulSet
	pdbs         []*policyv1.PodDisruptionBudget
	monitors     []*serviceMonitor
}

// decode splits helm template output and decodes every document strictly
// into its API type; an unknown kind fails.
func decode(t *testing.T, out string) rendered {
	t.Helper()
	r := rendered{configMaps: map[string]*corev1.ConfigMap{}, secrets: map[string]*corev1.Secret{}, services: map[string]*corev1.Service{}}
	for _, doc := range strings.Split(out, "\n---") {
		if strings.TrimSpace(strings.TrimPrefix(doc, "---")) == "" {
			continue
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
			t.Fatalf("manifest is not YAML: %v\n%s", err, doc)
		}
		var obj any
		var keep func()
		switch tm.APIVersion + " " + tm.Kind {
		case "v1 ConfigMap":
			o := &corev1.ConfigMap{}
			obj = o
			keep = func() { r.configMaps[o.Name] = o }
		case "v1 Secret":
			o := &corev1.Secret{}
			obj = o
			keep = func() { r.secrets[o.Name] = o }
		case "v1 Service":
			o := &corev1.Service{}
			obj = o
			keep = func() { r.services[o.Name] = o }
		case "apps/v1 StatefulSet":
			o := &appsv1.StatefulSet{}
			obj = o
			keep = func() { r.statefulSets = append(r.statefulSets, o) }
		case "policy/v1 PodDisruptionBudget":
			o := &policyv1.PodDisruptionBudget{}
			obj = o
			keep = func() { r.pdbs = append(r.pdbs, o) }
		case "monitoring.coreos.com/v1 ServiceMonitor":
			o := &serviceMonitor{}
			obj = o
			keep = func() { r.monitors = append(r.monitors, o) }
		default:
			t.Fatalf("rendered a %s %s, which this test does not know: add its type", tm.APIVersion, tm.Kind)
		}
		if err := yaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			t.Fatalf("%s does not decode strictly: %v\n%s", tm.Kind, err, doc)
		}
		keep()
	}
	return r
}

// TestChart lints the chart and renders it with several value sets; every
// manifest decodes strictly, the StatefulSet's references resolve, and the
// rendered sigil.yaml passes Sigil's own configuration validation.
func TestChart(t *testing.T) {
	bin := buildHelm(t)
	tlsValues := filepath.Join(t.TempDir(), "tls.yaml")
	if err := os.WriteFile(tlsValues, []byte("tls:\n  cert: |\n    -----BEGIN CERTIFICATE-----\n    MIIB\n    -----END CERTIFICATE-----\n  key: |\n    -----BEGIN PRIVATE KEY-----\n    MIIB\n    -----END PRIVATE KEY-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name         string
		args         []string
		replicas     int32
		postgres     bool
		hsm, monitor bool
	}{
		{"defaults", nil, 1, false, false, false},
		{"ha", []string{"-f", chartDir + "/values-ha.yaml"}, 3, true, false, true},
		{"ha with dsn, hsm and tls", []string{"-f", chartDir + "/values-ha.yaml", "-f", tlsValues,
			"--set", "storage.postgres.existingSecret=", "--set", "storage.postgres.dsn=postgres://sigil:pw@db-a:5432,db-b:5432/sigil?target_session_attrs=read-write",
			"--set", "hsm.enabled=true", "--set", "hsm.pinSecret=sigil-hsm-pin", "--set", "hsm.volume.persistentVolumeClaim.claimName=softhsm-tokens",
			"--set", "replicas=5"}, 5, true, true, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if out, err := helm(t, bin, append([]string{"lint", "--strict", chartDir}, tc.args...)...); err != nil {
				t.Fatalf("helm lint: %v\n%s", err, out)
			}
			out, err := helm(t, bin, append([]string{"template", "sigil", chartDir, "--namespace", "pki"}, tc.args...)...)
			if err != nil {
				t.Fatalf("helm template: %v\n%s", err, out)
			}
			r := decode(t, out)
			if len(r.statefulSets) != 1 || len(r.pdbs) != 1 {
				t.Fatalf("%d StatefulSets, %d PodDisruptionBudgets", len(r.statefulSets), len(r.pdbs))
			}
			if got := len(r.monitors); (got == 1) != tc.monitor {
				t.Errorf("%d ServiceMonitors, want enabled=%v", got, tc.monitor)
			}
			ss := r.statefulSets[0]
			if *ss.Spec.Replicas != tc.replicas {
				t.Errorf("replicas %d, want %d", *ss.Spec.Replicas, tc.replicas)
			}
			sel, err := metav1.LabelSelectorAsSelector(ss.Spec.Selector)
			if err != nil {
				t.Fatal(err)
			}
			if !sel.Matches(labelSet(ss.Spec.Template.Labels)) {
				t.Errorf("StatefulSet selector %v does not match its pod labels %v", ss.Spec.Selector, ss.Spec.Template.Labels)
			}
			if _, ok := r.services[ss.Spec.ServiceName]; !ok {
				t.Errorf("serviceName %q names no rendered Service", ss.Spec.ServiceName)
			}
			for _, svc := range r.services {
				if !sel.Matches(labelSet(svc.Spec.Selector)) {
					t.Errorf("Service %s selects %v, not the pods", svc.Name, svc.Spec.Selector)
				}
			}
			pod := ss.Spec.Template.Spec
			volumes := map[string]corev1.Volume{}
			for _, v := range pod.Volumes {
				volumes[v.Name] = v
			}
			for _, c := range ss.Spec.VolumeClaimTemplates {
				volumes[c.Name] = corev1.Volume{Name: c.Name}
			}
			if (len(ss.Spec.VolumeClaimTemplates) == 0) != tc.postgres {
				t.Errorf("volume claim templates %d with postgres=%v: the embedded database needs a volume", len(ss.Spec.VolumeClaimTemplates), tc.postgres)
			}
			ctr := pod.Containers[0]
			for _, m := range ctr.VolumeMounts {
				if _, ok := volumes[m.Name]; !ok {
					t.Errorf("volumeMount %s names no volume", m.Name)
				}
			}
			cm, ok := r.configMaps[volumes["config"].ConfigMap.Name]
			if !ok {
				t.Fatalf("config volume names no rendered ConfigMap")
			}
			cfg, err := config.Parse([]byte(cm.Data["sigil.yaml"]), config.Default())
			if err != nil {
				t.Fatalf("rendered sigil.yaml: %v\n%s", err, cm.Data["sigil.yaml"])
			}
			args := strings.Join(ctr.Args, " ")
			if tc.postgres {
				// The DSN comes from the Secret through $(SIGIL_STORAGE).
				if !strings.Contains(args, "--storage $(SIGIL_STORAGE)") || len(ctr.Env) != 1 || ctr.Env[0].ValueFrom.SecretKeyRef == nil {
					t.Errorf("postgres storage not wired: args %q env %v", args, ctr.Env)
				}
				cfg.Storage = "postgres://from-secret"
			}
			if err := cfg.Validate(); err != nil {
				t.Errorf("rendered sigil.yaml is refused by Sigil: %v", err)
			}
			if cfg.TLS.CertFile != "/etc/sigil/tls/tls.crt" || (cfg.HSM.URI != "") != tc.hsm {
				t.Errorf("rendered config tls %q, hsm %q", cfg.TLS.CertFile, cfg.HSM.URI)
			}
			if tc.hsm && !strings.Contains(cfg.HSM.URI, "module-path=/usr/lib/softhsm/libsofthsm2.so") {
				t.Errorf("hsm uri %q lacks the module path", cfg.HSM.URI)
			}
			if ctr.ReadinessProbe == nil || ctr.ReadinessProbe.HTTPGet.Path != "/readyz" {
				t.Error("no /readyz readiness probe")
			}
		})
	}
}

// TestChartRefusesUnsafeValues: value sets that cannot work fail the
// render with a message naming the value.
func TestChartRefusesUnsafeValues(t *testing.T) {
	bin := buildHelm(t)
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"replicas without postgres", []string{"--set", "replicas=3"}, "replicas > 1 needs storage.postgres"},
		{"https public url", []string{"--set", "publicURL=https://ca.example.org"}, "publicURL must be an http:// URL"},
		{"hsm without pin", []string{"--set", "hsm.enabled=true"}, "hsm.pinSecret"},
		{"half a tls pair", []string{"--set", "tls.cert=x"}, "tls.cert and tls.key go together"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := helm(t, bin, append([]string{"template", "sigil", chartDir}, tc.args...)...)
			if err == nil || !strings.Contains(out, tc.want) {
				t.Fatalf("helm template %v: err %v, output:\n%s\nwant a failure mentioning %q", tc.args, err, out, tc.want)
			}
		})
	}
}

type labelSet map[string]string

func (l labelSet) Has(k string) bool              { _, ok := l[k]; return ok }
func (l labelSet) Get(k string) string            { return l[k] }
func (l labelSet) Lookup(k string) (string, bool) { v, ok := l[k]; return v, ok }
