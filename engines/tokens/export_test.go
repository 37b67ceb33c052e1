package tokens

import "hash/crc32"

// EncodeChecksumForTest appends a valid checksum to an opaque token body,
// so tests can reach the checks behind it.
func EncodeChecksumForTest(body string) string {
	c := crc32.ChecksumIEEE([]byte(body))
	return body + "." + b64.EncodeToString([]byte{byte(c >> 24), byte(c >> 16), byte(c >> 8), byte(c)})
}
