package main

import (
	"strings"
	"testing"
)

func TestWithoutNodeRulesKeepsForeignRules(t *testing.T) {
	save := `*nat
:PREROUTING ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:CNI-8f2a - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -s 10.244.0.2/32 -m comment --comment "name: \"chorus\"" -j CNI-8f2a
-A POSTROUTING -s 192.0.2.0/24 -j MASQUERADE
COMMIT
`
	got, removed := withoutNodeRules(save)
	if !removed {
		t.Fatal("node rules were present but not reported")
	}
	for _, gone := range []string{"KUBE-", "CNI-"} {
		if strings.Contains(got, gone) {
			t.Errorf("%s left in:\n%s", gone, got)
		}
	}
	for _, kept := range []string{"*nat", ":PREROUTING ACCEPT", "-A POSTROUTING -s 192.0.2.0/24 -j MASQUERADE", "COMMIT"} {
		if !strings.Contains(got, kept) {
			t.Errorf("%q dropped:\n%s", kept, got)
		}
	}
	if _, removed := withoutNodeRules("*filter\n:INPUT ACCEPT [0:0]\nCOMMIT\n"); removed {
		t.Error("a table without node rules reported as changed")
	}
}

func TestFakeNodesAreTaintedOnlyBesideARealNode(t *testing.T) {
	if taints := fakeNodeSpec(true).Taints; len(taints) != 1 || taints[0].Key != fakeNodeTaint || taints[0].Effect != "NoSchedule" {
		t.Errorf("beside a real node: %v", taints)
	}
	if taints := fakeNodeSpec(false).Taints; len(taints) != 0 {
		t.Errorf("--kwok-only: %v", taints)
	}
}

func TestScaleFlagsOnlyForKwokOnly(t *testing.T) {
	if f := scaleFlags(false); len(f) != 0 {
		t.Errorf("beside a real node: %v", f)
	}
	if f := strings.Join(scaleFlags(true), " "); !strings.Contains(f, "--kube-api-qps=500") {
		t.Errorf("--kwok-only: %s", f)
	}
}
