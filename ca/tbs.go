package ca

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"fmt"
	"math/big"
	"time"
	"unicode"
)

// Pre-issuance lint needs the TBSCertificate before the real key signs.
// The standard library cannot build one without signing it, so lint used
// to sign every certificate with a throwaway key (x509.CreateCertificate
// signs, then verifies its own signature): about a tenth of the server's
// CPU per certificate went on a signature nobody used.
//
// encodeTBS builds the TBSCertificate itself, byte for byte what
// x509.CreateCertificate writes (Go 1.26, crypto/x509 CreateCertificate
// and buildCertExtensions), for the templates end-entity issuance makes:
// anything else (a CA, name constraints, policies, extra extensions, an
// EKU outside the table below) is not handled here and lint falls back to
// the throwaway signature. TestEncodeTBSMatchesCreateCertificate compares
// the two on every built-in profile and every issuer key type.
//
// What the guarantee rests on does not change: lint runs on the bytes the
// real key then signs (signTBS takes them from the linted certificate),
// whoever encoded them; the signature algorithm named in them is the one
// x509.CreateCertificate names for the issuer's key type (taken from a
// certificate it made with a key of that type), and signTBS checks the
// real signature under the issuer's key.

// tbsCertificate is crypto/x509's, with the algorithm and the key kept
// encoded.
type tbsCertificate struct {
	Version            int `asn1:"optional,explicit,default:0,tag:0"`
	SerialNumber       *big.Int
	SignatureAlgorithm asn1.RawValue
	Issuer             asn1.RawValue
	Validity           tbsValidity
	Subject            asn1.RawValue
	PublicKey          asn1.RawValue
	Extensions         []pkix.Extension `asn1:"omitempty,optional,explicit,tag:3"`
}

type tbsValidity struct {
	NotBefore, NotAfter time.Time
}

type tbsBasicConstraints struct {
	IsCA       bool `asn1:"optional"`
	MaxPathLen int  `asn1:"optional,default:-1"`
}

type tbsAuthKeyID struct {
	ID []byte `asn1:"optional,tag:0"`
}

type tbsAccess struct {
	Method   asn1.ObjectIdentifier
	Location asn1.RawValue
}

type tbsDistributionPoint struct {
	DistributionPoint tbsDistributionPointName `asn1:"optional,tag:0"`
	Reason            asn1.BitString           `asn1:"optional,tag:1"`
	CRLIssuer         asn1.RawValue            `asn1:"optional,tag:2"`
}

type tbsDistributionPointName struct {
	FullName     []asn1.RawValue  `asn1:"optional,tag:0"`
	RelativeName pkix.RDNSequence `asn1:"optional,tag:1"`
}

var (
	oidSubjectKeyID   = asn1.ObjectIdentifier{2, 5, 29, 14}
	oidKeyUsage       = asn1.ObjectIdentifier{2, 5, 29, 15}
	oidExtKeyUsage    = asn1.ObjectIdentifier{2, 5, 29, 37}
	oidAuthorityKeyID = asn1.ObjectIdentifier{2, 5, 29, 35}
	oidBasicConstr    = asn1.ObjectIdentifier{2, 5, 29, 19}
	oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}
	oidCRLDistPoints  = asn1.ObjectIdentifier{2, 5, 29, 31}
	oidAuthInfoAccess = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 1, 1}
	oidAccessOCSP     = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 1}
	oidAccessIssuers  = asn1.ObjectIdentifier{1, 3, 6, 1, 5, 5, 7, 48, 2}
)

// tbsExtKeyUsageOIDs are the extended key usages encodeTBS writes, as
// crypto/x509 does.
var tbsExtKeyUsageOIDs = map[x509.ExtKeyUsage]asn1.ObjectIdentifier{
	x509.ExtKeyUsageAny:             {2, 5, 29, 37, 0},
	x509.ExtKeyUsageServerAuth:      {1, 3, 6, 1, 5, 5, 7, 3, 1},
	x509.ExtKeyUsageClientAuth:      {1, 3, 6, 1, 5, 5, 7, 3, 2},
	x509.ExtKeyUsageCodeSigning:     {1, 3, 6, 1, 5, 5, 7, 3, 3},
	x509.ExtKeyUsageEmailProtection: {1, 3, 6, 1, 5, 5, 7, 3, 4},
	x509.ExtKeyUsageTimeStamping:    {1, 3, 6, 1, 5, 5, 7, 3, 8},
	x509.ExtKeyUsageOCSPSigning:     {1, 3, 6, 1, 5, 5, 7, 3, 9},
}

// emptySubject is an empty RDNSequence, encoded.
var emptySubject = []byte{0x30, 0}

// errTBSUnsupported: the template uses something encodeTBS does not
// write; the caller builds the TBS with x509.CreateCertificate instead.
var errTBSUnsupported = errors.New("template outside encodeTBS's subset")

// tbsSupported reports whether encodeTBS handles tmpl: every template field
// x509.CreateCertificate reads is either one encodeTBS writes or unset.
func tbsSupported(tmpl *x509.Certificate) bool {
	if tmpl.SerialNumber == nil || tmpl.SerialNumber.Sign() < 0 ||
		tmpl.SignatureAlgorithm != x509.UnknownSignatureAlgorithm ||
		tmpl.IsCA || tmpl.MaxPathLen != 0 || tmpl.MaxPathLenZero ||
		len(tmpl.ExtraExtensions) > 0 || len(tmpl.UnknownExtKeyUsage) > 0 ||
		len(tmpl.PolicyIdentifiers) > 0 || len(tmpl.Policies) > 0 ||
		tmpl.PermittedDNSDomainsCritical ||
		len(tmpl.PermittedDNSDomains) > 0 || len(tmpl.ExcludedDNSDomains) > 0 ||
		len(tmpl.PermittedIPRanges) > 0 || len(tmpl.ExcludedIPRanges) > 0 ||
		len(tmpl.PermittedEmailAddresses) > 0 || len(tmpl.ExcludedEmailAddresses) > 0 ||
		len(tmpl.PermittedURIDomains) > 0 || len(tmpl.ExcludedURIDomains) > 0 {
		return false
	}
	for _, u := range tmpl.ExtKeyUsage {
		if _, ok := tbsExtKeyUsageOIDs[u]; !ok {
			return false
		}
	}
	return true
}

// encodeTBS returns tmpl's TBSCertificate with parent as issuer, pub as
// subject key and algDER (an encoded AlgorithmIdentifier) as signature
// algorithm. It returns errTBSUnsupported for a template outside
// tbsSupported.
func encodeTBS(tmpl, parent *x509.Certificate, pub crypto.PublicKey, algDER []byte) ([]byte, error) {
	if !tbsSupported(tmpl) {
		return nil, errTBSUnsupported
	}
	spki, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, err
	}
	issuer, err := tbsSubjectBytes(parent)
	if err != nil {
		return nil, err
	}
	subject, err := tbsSubjectBytes(tmpl)
	if err != nil {
		return nil, err
	}
	authorityKeyID := tmpl.AuthorityKeyId
	if !bytes.Equal(issuer, subject) && len(parent.SubjectKeyId) > 0 {
		authorityKeyID = parent.SubjectKeyId
	}
	exts, err := tbsExtensions(tmpl, bytes.Equal(subject, emptySubject), authorityKeyID)
	if err != nil {
		return nil, err
	}
	return asn1.Marshal(tbsCertificate{
		Version:            2,
		SerialNumber:       tmpl.SerialNumber,
		SignatureAlgorithm: asn1.RawValue{FullBytes: algDER},
		Issuer:             asn1.RawValue{FullBytes: issuer},
		Validity:           tbsValidity{tmpl.NotBefore.UTC(), tmpl.NotAfter.UTC()},
		Subject:            asn1.RawValue{FullBytes: subject},
		PublicKey:          asn1.RawValue{FullBytes: spki},
		Extensions:         exts,
	})
}

func tbsSubjectBytes(c *x509.Certificate) ([]byte, error) {
	if len(c.RawSubject) > 0 {
		return c.RawSubject, nil
	}
	return asn1.Marshal(c.Subject.ToRDNSequence())
}

// tbsExtensions is crypto/x509's buildCertExtensions for the fields
// tbsSupported allows, in its order.
func tbsExtensions(tmpl *x509.Certificate, subjectIsEmpty bool, authorityKeyID []byte) ([]pkix.Extension, error) {
	ret := make([]pkix.Extension, 0, 8)
	if tmpl.KeyUsage != 0 {
		var a [2]byte
		a[0] = reverseBits(byte(tmpl.KeyUsage))
		a[1] = reverseBits(byte(tmpl.KeyUsage >> 8))
		l := 1
		if a[1] != 0 {
			l = 2
		}
		bits := a[:l]
		v, err := asn1.Marshal(asn1.BitString{Bytes: bits, BitLength: bitLength(bits)})
		if err != nil {
			return nil, err
		}
		ret = append(ret, pkix.Extension{Id: oidKeyUsage, Critical: true, Value: v})
	}
	if len(tmpl.ExtKeyUsage) > 0 {
		oids := make([]asn1.ObjectIdentifier, len(tmpl.ExtKeyUsage))
		for i, u := range tmpl.ExtKeyUsage {
			oids[i] = tbsExtKeyUsageOIDs[u]
		}
		v, err := asn1.Marshal(oids)
		if err != nil {
			return nil, err
		}
		ret = append(ret, pkix.Extension{Id: oidExtKeyUsage, Value: v})
	}
	if tmpl.BasicConstraintsValid {
		// Not a CA (tbsSupported), so no path length.
		v, err := asn1.Marshal(tbsBasicConstraints{false, -1})
		if err != nil {
			return nil, err
		}
		ret = append(ret, pkix.Extension{Id: oidBasicConstr, Critical: true, Value: v})
	}
	if len(tmpl.SubjectKeyId) > 0 {
		v, err := asn1.Marshal(tmpl.SubjectKeyId)
		if err != nil {
			return nil, err
		}
		ret = append(ret, pkix.Extension{Id: oidSubjectKeyID, Value: v})
	}
	if len(authorityKeyID) > 0 {
		v, err := asn1.Marshal(tbsAuthKeyID{authorityKeyID})
		if err != nil {
			return nil, err
		}
		ret = append(ret, pkix.Extension{Id: oidAuthorityKeyID, Value: v})
	}
	if len(tmpl.OCSPServer) > 0 || len(tmpl.IssuingCertificateURL) > 0 {
		var aia []tbsAccess
		for _, name := range tmpl.OCSPServer {
			aia = append(aia, tbsAccess{Method: oidAccessOCSP, Location: asn1.RawValue{Tag: 6, Class: 2, Bytes: []byte(name)}})
		}
		for _, name := range tmpl.IssuingCertificateURL {
			aia = append(aia, tbsAccess{Method: oidAccessIssuers, Location: asn1.RawValue{Tag: 6, Class: 2, Bytes: []byte(name)}})
		}
		v, err := asn1.Marshal(aia)
		if err != nil {
			return nil, err
		}
		ret = append(ret, pkix.Extension{Id: oidAuthInfoAccess, Value: v})
	}
	if len(tmpl.DNSNames) > 0 || len(tmpl.EmailAddresses) > 0 || len(tmpl.IPAddresses) > 0 || len(tmpl.URIs) > 0 {
		v, err := tbsSANs(tmpl)
		if err != nil {
			return nil, err
		}
		// RFC 5280 4.2.1.6: critical when the subject is empty.
		ret = append(ret, pkix.Extension{Id: oidSubjectAltName, Critical: subjectIsEmpty, Value: v})
	}
	if len(tmpl.CRLDistributionPoints) > 0 {
		var dps []tbsDistributionPoint
		for _, name := range tmpl.CRLDistributionPoints {
			dps = append(dps, tbsDistributionPoint{DistributionPoint: tbsDistributionPointName{
				FullName: []asn1.RawValue{{Tag: 6, Class: 2, Bytes: []byte(name)}},
			}})
		}
		v, err := asn1.Marshal(dps)
		if err != nil {
			return nil, err
		}
		ret = append(ret, pkix.Extension{Id: oidCRLDistPoints, Value: v})
	}
	return ret, nil
}

// tbsSANs is crypto/x509's marshalSANs.
func tbsSANs(tmpl *x509.Certificate) ([]byte, error) {
	const (
		nameTypeEmail = 1
		nameTypeDNS   = 2
		nameTypeURI   = 6
		nameTypeIP    = 7
	)
	var raw []asn1.RawValue
	for _, name := range tmpl.DNSNames {
		if err := ia5(name); err != nil {
			return nil, err
		}
		raw = append(raw, asn1.RawValue{Tag: nameTypeDNS, Class: 2, Bytes: []byte(name)})
	}
	for _, email := range tmpl.EmailAddresses {
		if err := ia5(email); err != nil {
			return nil, err
		}
		raw = append(raw, asn1.RawValue{Tag: nameTypeEmail, Class: 2, Bytes: []byte(email)})
	}
	for _, rawIP := range tmpl.IPAddresses {
		ip := rawIP.To4()
		if ip == nil {
			ip = rawIP
		}
		raw = append(raw, asn1.RawValue{Tag: nameTypeIP, Class: 2, Bytes: ip})
	}
	for _, u := range tmpl.URIs {
		s := u.String()
		if err := ia5(s); err != nil {
			return nil, err
		}
		raw = append(raw, asn1.RawValue{Tag: nameTypeURI, Class: 2, Bytes: []byte(s)})
	}
	return asn1.Marshal(raw)
}

func ia5(s string) error {
	for _, r := range s {
		if r > unicode.MaxASCII {
			return fmt.Errorf("x509: %q cannot be encoded as an IA5String", s)
		}
	}
	return nil
}

func reverseBits(in byte) byte {
	b1 := in>>4 | in<<4
	b2 := b1>>2&0x33 | b1<<2&0xcc
	return b2>>1&0x55 | b2<<1&0xaa
}

// bitLength is crypto/x509's asn1BitLength.
func bitLength(bits []byte) int {
	n := len(bits) * 8
	for i := range bits {
		b := bits[len(bits)-i-1]
		for bit := uint(0); bit < 8; bit++ {
			if (b>>bit)&1 == 1 {
				return n
			}
			n--
		}
	}
	return 0
}
