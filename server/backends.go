package server

// ReopenAuditFile reopens the audit file after logrotate moved it (SIGHUP).
func (s *Server) ReopenAuditFile() error {
	a := s.current()
	if a == nil || a.AuditFile == nil {
		return nil
	}
	return a.AuditFile.Reopen()
}
