package testenv

import "go.yaml.in/yaml/v3"

// RuleFile is the part of a Prometheus rule file the tests read.
type RuleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Alert       string            `yaml:"alert"`
			Record      string            `yaml:"record"`
			Expr        string            `yaml:"expr"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

// LoadRules reads and decodes the rule file at path.
func LoadRules(path string) (*RuleFile, error) {
	var f RuleFile
	return &f, decodeFile(path, yaml.Unmarshal, &f)
}

// Records returns the names of the recording rules.
func (f *RuleFile) Records() []string {
	var out []string
	for _, g := range f.Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				out = append(out, r.Record)
			}
		}
	}
	return out
}
