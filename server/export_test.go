package server

// SealedKinds reports the kinds s's barrier sealed values under and those
// of them no rewrapper covers, for tests.
func SealedKinds(s *Server) (sealed, unregistered []string) {
	return s.barrier.SealedKinds(), s.barrier.UnregisteredKinds()
}
