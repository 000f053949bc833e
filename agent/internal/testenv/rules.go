package testenv

import (
	"fmt"
	"os"

	"go.yaml.in/yaml/v3"
)

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
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the rules: %w", err)
	}
	var f RuleFile
	if err := yaml.Unmarshal(data, &f); err != nil {
		return nil, fmt.Errorf("decoding the rules %s: %w", path, err)
	}
	return &f, nil
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
