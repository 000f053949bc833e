package names

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
	"unicode"

	"golang.org/x/text/unicode/norm"
)

// TestLuaTableUpToDate keeps the Lua check's table equal to what the Go
// rules produce: regenerate it with `go generate ./agent/names`.
func TestLuaTableUpToDate(t *testing.T) {
	var want bytes.Buffer
	if err := WriteLuaTable(&want); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join("..", "..", LuaTablePath))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want.Bytes()) {
		t.Fatalf("%s is not what the Go rules generate; run `go generate ./agent/names`", LuaTablePath)
	}
}

// TestLuaTableProperties checks what the probes of x/net/idna found against
// the Unicode data: marks are marks, viramas have combining class 9, the
// snowman is out and letters of several scripts are in.
func TestLuaTableProperties(t *testing.T) {
	errs := 0
	for r := rune(0x80); r <= unicode.MaxRune && errs < 10; r++ {
		if r >= 0xD800 && r <= 0xDFFF {
			continue
		}
		p, err := runeProps(r)
		if err != nil {
			t.Fatal(err)
		}
		if p == 0 {
			continue
		}
		if got, want := p&propMark != 0, unicode.Is(unicode.Mark, r); got != want {
			t.Errorf("%U: mark %v, Unicode says %v", r, got, want)
			errs++
		}
		if got, want := p&propVirama != 0, norm.NFC.PropertiesString(string(r)).CCC() == 9; got != want {
			t.Errorf("%U: virama %v, combining class 9 %v", r, got, want)
			errs++
		}
	}
	for r, want := range map[rune]bool{0x2603: false, 0x1F4A9: false, 0x0640: false, 0x00FC: true, 0x4E2D: true,
		0x0628: true, 0x05D0: true, 0x00DF: true, 0x200C: true, 0x0041: false, 0x0061: true} {
		if p, _ := runeProps(r); (p != 0) != want {
			t.Errorf("%U: allowed %v, want %v", r, p != 0, want)
		}
	}
}
