// Command openapi2jsonschema turns the OpenAPI documents served by our
// kube-apiserver into the per-kind, standalone JSON schemas that kubeconform
// reads, so manifests are checked against exactly the Kubernetes version we
// build, with no schema download.
//
//	openapi2jsonschema -in group1.json -in group2.json ... -out DIR [-strict]
//
// Inputs are OpenAPI v3 documents (/openapi/v3/apis/<group>/<version>,
// schemas under components.schemas) or a v2 document (/openapi/v2, schemas
// under definitions). Prefer v3: v2 drops the types of nullable fields, which
// hides most of a CRD's schema.
//
// Files are named like kubeconform's default layout, `<kind><suffix>.json`
// (deployment-apps-v1.json, service-v1.json); point kubeconform at them with
// -schema-location 'DIR/{{ .ResourceKind }}{{ .KindSuffix }}.json'.
// With -strict, objects that list their properties refuse unknown fields.
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"strings"
)

type converter struct {
	defs   map[string]any
	strict bool
}

func main() {
	var inputs multi
	flag.Var(&inputs, "in", "OpenAPI document (repeatable)")
	out := flag.String("out", "", "output directory")
	strict := flag.Bool("strict", true, "disallow properties a schema does not list")
	flag.Parse()
	if len(inputs) == 0 || *out == "" {
		log.Fatal("openapi2jsonschema: -in and -out are required")
	}
	defs := map[string]any{}
	for _, in := range inputs {
		raw, err := os.ReadFile(in)
		if err != nil {
			log.Fatalf("openapi2jsonschema: %v", err)
		}
		var doc struct {
			Definitions map[string]any `json:"definitions"`
			Components  struct {
				Schemas map[string]any `json:"schemas"`
			} `json:"components"`
		}
		if err := json.Unmarshal(raw, &doc); err != nil {
			log.Fatalf("openapi2jsonschema: %s is not an OpenAPI document: %v", in, err)
		}
		for k, v := range doc.Definitions {
			defs[k] = v
		}
		for k, v := range doc.Components.Schemas {
			defs[k] = v
		}
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		log.Fatal(err)
	}
	c := &converter{defs: defs, strict: *strict}
	written := 0
	for name, def := range defs {
		m, ok := def.(map[string]any)
		if !ok {
			continue
		}
		gvks, _ := m["x-kubernetes-group-version-kind"].([]any)
		for _, g := range gvks {
			gvk, _ := g.(map[string]any)
			group, _ := gvk["group"].(string)
			version, _ := gvk["version"].(string)
			kind, _ := gvk["kind"].(string)
			if kind == "" || version == "" {
				continue
			}
			schema := c.resolve(map[string]any{"$ref": "#/definitions/" + name}, map[string]bool{})
			if sm, ok := schema.(map[string]any); ok {
				// kubeconform checks apiVersion/kind itself; v3 documents
				// make them enums of this one kind.
				if props, ok := sm["properties"].(map[string]any); ok {
					delete(props, "apiVersion")
					delete(props, "kind")
					props["apiVersion"] = map[string]any{"type": "string"}
					props["kind"] = map[string]any{"type": "string"}
				}
			}
			if sm, ok := schema.(map[string]any); ok {
				sm["$schema"] = "http://json-schema.org/schema#"
			}
			body, err := json.MarshalIndent(schema, "", "  ")
			if err != nil {
				log.Fatal(err)
			}
			file := filepath.Join(*out, fileName(kind, group, version))
			if err := os.WriteFile(file, body, 0o644); err != nil {
				log.Fatal(err)
			}
			written++
		}
	}
	fmt.Fprintf(os.Stderr, "openapi2jsonschema: wrote %d schemas to %s\n", written, *out)
}

type multi []string

func (m *multi) String() string     { return strings.Join(*m, ",") }
func (m *multi) Set(v string) error { *m = append(*m, v); return nil }

// fileName follows kubeconform's {{ .ResourceKind }}{{ .KindSuffix }}.
func fileName(kind, group, version string) string {
	name := strings.ToLower(kind)
	if group != "" {
		name += "-" + strings.ToLower(strings.Split(group, ".")[0])
	}
	return name + "-" + strings.ToLower(version) + ".json"
}

// resolve inlines $refs (cycles become an open schema), maps the string
// formats Kubernetes accepts as numbers, and applies strictness.
func (c *converter) resolve(node any, stack map[string]bool) any {
	switch n := node.(type) {
	case []any:
		out := make([]any, len(n))
		for i, v := range n {
			out[i] = c.resolve(v, stack)
		}
		return out
	case map[string]any:
		if ref, ok := n["$ref"].(string); ok {
			name := strings.TrimPrefix(strings.TrimPrefix(ref, "#/definitions/"), "#/components/schemas/")
			switch name {
			case "io.k8s.apimachinery.pkg.util.intstr.IntOrString":
				return map[string]any{"oneOf": []any{map[string]any{"type": "string"}, map[string]any{"type": "integer"}}}
			case "io.k8s.apimachinery.pkg.api.resource.Quantity":
				return map[string]any{"oneOf": []any{map[string]any{"type": "string"}, map[string]any{"type": "number"}}}
			}
			if stack[name] {
				return map[string]any{}
			}
			def, ok := c.defs[name]
			if !ok {
				return map[string]any{}
			}
			stack[name] = true
			defer delete(stack, name)
			resolved := c.resolve(def, stack)
			if m, ok := resolved.(map[string]any); ok {
				for k, v := range n {
					if k != "$ref" {
						m[k] = v
					}
				}
			}
			return resolved
		}
		out := make(map[string]any, len(n))
		for k, v := range n {
			switch k {
			case "properties":
				props := map[string]any{}
				if pm, ok := v.(map[string]any); ok {
					for pk, pv := range pm {
						props[pk] = nullable(c.resolve(pv, stack))
					}
				}
				out[k] = props
			case "x-kubernetes-group-version-kind", "x-kubernetes-patch-strategy", "x-kubernetes-patch-merge-key", "x-kubernetes-list-type", "x-kubernetes-list-map-keys", "x-kubernetes-map-type", "x-kubernetes-unions":
				// annotations kubeconform does not need
			default:
				out[k] = c.resolve(v, stack)
			}
		}
		if c.strict {
			if _, hasProps := out["properties"]; hasProps {
				if _, hasAdditional := out["additionalProperties"]; !hasAdditional {
					out["additionalProperties"] = false
				}
			}
		}
		return out
	default:
		return n
	}
}

// nullable lets an optional field be written as null, as kubectl and Helm
// accept.
func nullable(schema any) any {
	m, ok := schema.(map[string]any)
	if !ok {
		return schema
	}
	if t, ok := m["type"].(string); ok {
		m["type"] = []any{t, "null"}
	}
	return m
}
