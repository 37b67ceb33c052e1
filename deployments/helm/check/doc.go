// Package check lints and renders the Sigil Helm chart with Helm's own Go
// packages and decodes every rendered manifest strictly into the
// Kubernetes API types. It is its own module so the main module does not
// depend on Helm and client-go.
package check
