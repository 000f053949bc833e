package manager

import "sync"

// claimSet holds the keys (names, stream entries) this agent is working on,
// so that concurrent workers do not take one twice. The zero value is
// empty and ready; it is safe for concurrent use.
type claimSet struct {
	mu   sync.Mutex
	keys map[string]struct{}
}

// claim takes key; false if it is taken already.
func (s *claimSet) claim(key string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, taken := s.keys[key]; taken {
		return false
	}
	if s.keys == nil {
		s.keys = map[string]struct{}{}
	}
	s.keys[key] = struct{}{}
	return true
}

// release gives key back.
func (s *claimSet) release(key string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.keys, key)
}
