package store

import (
	"testing"

	"github.com/redis/go-redis/v9"
)

// An entry without a name field is told apart from an empty name.
func TestRequestWithoutANameField(t *testing.T) {
	for _, tc := range []struct {
		values map[string]any
		noName bool
	}{
		{map[string]any{"name": "a.example.com", "node": "n1"}, false},
		{map[string]any{"name": "", "node": "n1"}, false},
		{map[string]any{"node": "n1"}, true},
		{map[string]any{"host": "a.example.com"}, true},
	} {
		r := requestOf(redis.XMessage{ID: "1-0", Values: tc.values})
		if r.NoName != tc.noName {
			t.Errorf("%v: NoName %v, want %v", tc.values, r.NoName, tc.noName)
		}
	}
}
