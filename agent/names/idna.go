package names

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/net/idna"
	"golang.org/x/text/cases"
	"golang.org/x/text/secure/bidirule"
	"golang.org/x/text/unicode/bidi"
	"golang.org/x/text/unicode/norm"
)

// The IDNA rules certagent applies, on both sides (lua/certagent/names.lua
// implements the same checks on tables generated from these; see
// luatable.go):
//
//   - UTS #46 non-transitional processing, with the STD3 rules (letters,
//     digits and hyphens), the hyphen rules, the joiner rules (RFC 5892,
//     appendix A.1 and A.2) and, for an A-label, the validity of every code
//     point and NFC: x/net/idna with labelProfile;
//   - IDNA2008's derived property (RFC 5892, section 2), which UTS #46 does
//     not apply: a symbol such as U+2603 SNOWMAN is valid in UTS #46 but
//     DISALLOWED in IDNA2008, and a public CA refuses it (allowed2008);
//   - the Bidi rule (RFC 5893) on every label of a name that has a
//     right-to-left label.
//
// The CONTEXTO rules (RFC 5892, appendix A.3 to A.9) are not applied: neither
// UTS #46 nor x/net/idna does.
var (
	// labelProfile checks one A-label (and maps operator input); the Bidi
	// rule is applied to the whole name by checkBidi.
	labelProfile = idna.New(idna.MapForLookup(), idna.Transitional(false), idna.StrictDomainName(true),
		idna.CheckHyphens(true), idna.CheckJoiners(true))
	// operatorProfile maps a Unicode name an operator typed to its xn-- form.
	operatorProfile = idna.New(idna.MapForLookup(), idna.Transitional(false), idna.StrictDomainName(true),
		idna.CheckHyphens(true), idna.CheckJoiners(true), idna.BidiRule())
)

// FromOperator normalizes a name an operator typed (a flag, an allow rule, a
// CLI argument): Unicode names are converted to their xn-- form with the
// IDNA lookup rules (UTS #46 mapping, so "Bücher.Example" and fullwidth
// letters work), then Normalize applies, so every xn-- label must be a valid
// IDNA2008 A-label. SNI never goes through here: clients send the xn-- form.
func FromOperator(raw string) (string, error) {
	if isASCII(raw) {
		return Normalize(raw)
	}
	ascii, err := operatorProfile.ToASCII(raw)
	if err != nil {
		return "", fmt.Errorf("invalid name %q: not a valid internationalized name: %v", raw, err)
	}
	name, err := NormalizeLDH(ascii)
	if err == nil {
		err = checkIDNA(name)
	}
	if err != nil {
		return "", fmt.Errorf("invalid name %q (as %q): %w", raw, ascii, err)
	}
	return name, nil
}

// CheckIDNA rejects a normalized name with an xn-- label that is not a valid
// IDNA2008 A-label: not punycode, not the canonical encoding of what it
// decodes to, or decoding to a label the rules above refuse. A CA refuses
// such a name.
func CheckIDNA(name string) error {
	if err := checkIDNA(name); err != nil {
		return fmt.Errorf("invalid name %q: %w", name, err)
	}
	return nil
}

// invalidLabel is why checkIDNA refuses a name.
type invalidLabel struct{ label, why string }

func (e *invalidLabel) Error() string { return fmt.Sprintf("label %q %s", e.label, e.why) }

func checkIDNA(name string) error {
	labels := strings.Split(name, ".")
	rtl := false
	var unicodeLabels []string
	for i, label := range labels {
		if !strings.HasPrefix(label, "xn--") {
			continue
		}
		u, err := decodeALabel(label)
		if err != nil {
			return err
		}
		if unicodeLabels == nil {
			unicodeLabels = append([]string(nil), labels...)
		}
		unicodeLabels[i] = u
		rtl = rtl || bidirule.DirectionString(u) == bidi.RightToLeft
	}
	if rtl {
		for i, u := range unicodeLabels {
			if !bidirule.ValidString(u) {
				return &invalidLabel{labels[i], "breaks the Bidi rule (RFC 5893) of a right-to-left name"}
			}
		}
	}
	return nil
}

// decodeALabel returns the U-label of an xn-- label, or why it is refused.
func decodeALabel(label string) (string, error) {
	u, err := labelProfile.ToUnicode(label)
	if err != nil {
		return "", &invalidLabel{label, fmt.Sprintf("is not a valid A-label: %v", err)}
	}
	for _, r := range u {
		if why := disallowed2008(r); why != "" {
			return "", &invalidLabel{label, fmt.Sprintf("(%s) has %U %q, which IDNA2008 disallows: %s", u, r, r, why)}
		}
	}
	back, err := labelProfile.ToASCII(u)
	if err != nil || back != label {
		return "", &invalidLabel{label, fmt.Sprintf("is not the canonical form of %q", u)}
	}
	return u, nil
}

// disallowed2008 returns why IDNA2008's derived property (RFC 5892, section
// 2.x rules in their order) is DISALLOWED or UNASSIGNED for r, or "" when it
// is PVALID, CONTEXTJ or CONTEXTO. The Unicode data are Go's and x/text's, the
// same version as x/net/idna's tables.
func disallowed2008(r rune) string {
	if v, ok := exceptions2008[r]; ok {
		if v {
			return ""
		}
		return "an exception (RFC 5892, 2.6)"
	}
	switch {
	case !unicode.In(r, assigned...):
		return "unassigned"
	case r == '-' || 'a' <= r && r <= 'z' || '0' <= r && r <= '9':
		return ""
	case unicode.Is(unicode.Join_Control, r):
		return "" // CONTEXTJ: the joiner rules decide
	case unstable2008(r):
		return "not stable under case folding and NFKC"
	case unicode.In(r, unicode.White_Space, unicode.Noncharacter_Code_Point, unicode.Other_Default_Ignorable_Code_Point,
		unicode.Variation_Selector, unicode.Cf):
		return "ignorable"
	case inRanges(r, ignorableBlocks2008), inRanges(r, oldHangulJamo2008):
		return "an ignorable block or old Hangul jamo"
	case unicode.In(r, unicode.Ll, unicode.Lu, unicode.Lo, unicode.Nd, unicode.Lm, unicode.Mn, unicode.Mc):
		return ""
	}
	return "not a letter, digit or mark (a symbol or punctuation)"
}

var assigned = []*unicode.RangeTable{unicode.L, unicode.M, unicode.N, unicode.P, unicode.S, unicode.Z, unicode.C}

var foldCase = cases.Fold()

// unstable2008 is RFC 5892's Unstable rule: NFKC(casefold(NFKC(r))) != r.
func unstable2008(r rune) bool {
	s := string(r)
	return norm.NFKC.String(foldCase.String(norm.NFKC.String(s))) != s
}

// exceptions2008 are RFC 5892's exceptions (section 2.6): true for PVALID
// and CONTEXTO, false for DISALLOWED.
var exceptions2008 = func() map[rune]bool {
	m := map[rune]bool{
		0x00DF: true, 0x03C2: true, 0x06FD: true, 0x06FE: true, 0x0F0B: true, 0x3007: true, // PVALID
		0x00B7: true, 0x0375: true, 0x05F3: true, 0x05F4: true, 0x30FB: true, // CONTEXTO
		0x0640: false, 0x07FA: false, 0x302E: false, 0x302F: false, 0x303B: false, // DISALLOWED
	}
	for r := rune(0x0660); r <= 0x0669; r++ {
		m[r] = true
	}
	for r := rune(0x06F0); r <= 0x06F9; r++ {
		m[r] = true
	}
	for r := rune(0x3031); r <= 0x3035; r++ {
		m[r] = false
	}
	return m
}()

// RFC 5892's IgnorableBlocks and OldHangulJamo (Hangul_Syllable_Type L, V, T).
var (
	ignorableBlocks2008 = [][2]rune{{0x20D0, 0x20FF}, {0x1D100, 0x1D1FF}, {0x1D200, 0x1D24F}}
	oldHangulJamo2008   = [][2]rune{{0x1100, 0x11FF}, {0xA960, 0xA97F}, {0xD7B0, 0xD7FF}}
)

func inRanges(r rune, ranges [][2]rune) bool {
	for _, rg := range ranges {
		if rg[0] <= r && r <= rg[1] {
			return true
		}
	}
	return false
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}
