package main

// Add-ons beside the real node: kwok keeps a few fake nodes (and the pods
// bound to them) Ready, for scale tests that need more pods than one machine
// runs; metrics-server reads the real kubelet's resource metrics and serves
// metrics.k8s.io through the API server's aggregation layer, so an HPA on a
// ChatTenant's /scale sees real CPU.

import (
	"context"
	"fmt"
	"log"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	apiregv1 "k8s.io/kube-aggregator/pkg/apis/apiregistration/v1"
	aggregator "k8s.io/kube-aggregator/pkg/client/clientset_generated/clientset"
)

// Fake nodes carry this taint; only pods that tolerate it land there.
const (
	fakeNodeTaint      = "kwok.x-k8s.io/node"
	fakeNodeAnnotation = "kwok.x-k8s.io/node=fake"
	// kwok renews each fake node's Lease in kube-node-lease; the kubelet's
	// default.
	fakeNodeLeaseSeconds = 40
)

// admin is the launcher's own API client (the admin identity).
type admin struct {
	cs  kubernetes.Interface
	agg aggregator.Interface
}

func newAdmin(kubeconfig string) (*admin, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		return nil, err
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	agg, err := aggregator.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &admin{cs: cs, agg: agg}, nil
}

// waitNodeReady polls until the node's Ready condition is True.
func (a *admin) waitNodeReady(ctx context.Context, sup *supervisor, name string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	last := "not registered yet"
	for time.Now().Before(deadline) {
		node, err := a.cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			last = "no Ready condition yet"
			for _, c := range node.Status.Conditions {
				if c.Type == corev1.NodeReady {
					if c.Status == corev1.ConditionTrue {
						return nil
					}
					last = fmt.Sprintf("Ready=%s (%s: %s)", c.Status, c.Reason, c.Message)
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("interrupted")
		case died := <-sup.died:
			return fmt.Errorf("%s exited; see %s", died, filepath.Join(sup.stateDir, died+".log"))
		case <-time.After(500 * time.Millisecond):
		}
	}
	return fmt.Errorf("node %s not Ready after %s: %s (see kubelet.log)", name, timeout, last)
}

// startKwok runs kwok for the nodes annotated kwok.x-k8s.io/node=fake and
// creates count such nodes, tainted (beside a real node) so that only pods
// asking for them land there. Pods on them get addresses from 10.245.0.0/16
// and never run.
func startKwok(ctx context.Context, sup *supervisor, binDir, stateDir, kubeconfig string, a *admin, count int, tainted bool) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	err = sup.start("kwok", filepath.Join(binDir, "kwok"),
		"--kubeconfig="+kubeconfig,
		"--config="+filepath.Join(binDir, "kwok-stages.yaml"),
		"--manage-nodes-with-annotation-selector="+fakeNodeAnnotation,
		"--cidr=10.245.0.0/16",
		fmt.Sprintf("--server-address=127.0.0.1:%d", port),
		// The heartbeat stage renews a node's status only every 10 to 20
		// minutes and counts on its Lease for liveness: without one the node
		// lifecycle controller finds every fake node NotReady after 50 s and
		// marks its pods not Ready (and never back).
		fmt.Sprintf("--node-lease-duration-seconds=%d", fakeNodeLeaseSeconds),
	)
	if err != nil {
		return err
	}
	for i := 0; i < count; i++ {
		node := &corev1.Node{
			ObjectMeta: metav1.ObjectMeta{
				Name:        fmt.Sprintf("kwok-node-%d", i),
				Annotations: map[string]string{fakeNodeTaint: "fake", "node.alpha.kubernetes.io/ttl": "0"},
				Labels: map[string]string{
					"type":                   "kwok",
					"kubernetes.io/hostname": fmt.Sprintf("kwok-node-%d", i),
					"kubernetes.io/os":       "linux",
					"kubernetes.io/arch":     "amd64",
				},
			},
			Spec: fakeNodeSpec(tainted),
			Status: corev1.NodeStatus{
				Capacity: corev1.ResourceList{
					corev1.ResourceCPU:    resource.MustParse("64"),
					corev1.ResourceMemory: resource.MustParse("512Gi"),
					corev1.ResourcePods:   resource.MustParse("3000"),
				},
				Allocatable: corev1.ResourceList{
					corev1.ResourceCPU:    resource.MustParse("64"),
					corev1.ResourceMemory: resource.MustParse("512Gi"),
					corev1.ResourcePods:   resource.MustParse("3000"),
				},
			},
		}
		if _, err := a.cs.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating fake node %s: %w", node.Name, err)
		}
	}
	for i := 0; i < count; i++ {
		if err := a.waitNodeReady(ctx, sup, fmt.Sprintf("kwok-node-%d", i), time.Minute); err != nil {
			return fmt.Errorf("%w (see kwok.log)", err)
		}
	}
	if tainted {
		log.Printf("%d kwok fake nodes Ready (taint %s=fake:NoSchedule)", count, fakeNodeTaint)
	} else {
		log.Printf("%d kwok fake nodes Ready (untainted)", count)
	}
	return nil
}

// fakeNodeSpec keeps pods off a fake node unless they tolerate its taint
// (beside a real node), or not at all (--kwok-only: there is no other node).
func fakeNodeSpec(tainted bool) corev1.NodeSpec {
	if !tainted {
		return corev1.NodeSpec{}
	}
	return corev1.NodeSpec{Taints: []corev1.Taint{{Key: fakeNodeTaint, Value: "fake", Effect: corev1.TaintEffectNoSchedule}}}
}

// startMetricsServer runs metrics-server on the host, listening on the node
// bridge's address, registers it as v1beta1.metrics.k8s.io through a Service
// without selector and an EndpointSlice naming that address, and waits until
// the APIService is Available.
func startMetricsServer(ctx context.Context, sup *supervisor, binDir, stateDir, kubeconfig string, a *admin) error {
	port, err := freePortOn(bridgeIP)
	if err != nil {
		return err
	}
	err = sup.start("metrics-server", filepath.Join(binDir, "metrics-server"),
		"--kubeconfig="+kubeconfig,
		"--authentication-kubeconfig="+kubeconfig,
		"--authorization-kubeconfig="+kubeconfig,
		"--bind-address="+bridgeIP,
		fmt.Sprintf("--secure-port=%d", port),
		"--cert-dir="+filepath.Join(stateDir, "metrics-server"),
		"--kubelet-insecure-tls",
		"--kubelet-preferred-address-types=InternalIP",
		"--kubelet-use-node-status-port",
		"--node-selector=chorus.dev/node-kind=real",
		"--metric-resolution=15s",
		"--kubelet-request-timeout=5s",
	)
	if err != nil {
		return err
	}
	ns := "kube-system"
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "metrics-server", Namespace: ns},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{
			Name: "https", Port: 443, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(int32(port)),
		}}},
	}
	if _, err := a.cs.CoreV1().Services(ns).Create(ctx, svc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating the metrics-server Service: %w", err)
	}
	portName, proto, p32, ready := "https", corev1.ProtocolTCP, int32(port), true
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{
			Name: "metrics-server", Namespace: ns,
			Labels: map[string]string{discoveryv1.LabelServiceName: "metrics-server", discoveryv1.LabelManagedBy: "chorus-cluster"},
		},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{bridgeIP}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}},
		Ports:       []discoveryv1.EndpointPort{{Name: &portName, Protocol: &proto, Port: &p32}},
	}
	if _, err := a.cs.DiscoveryV1().EndpointSlices(ns).Create(ctx, slice, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating the metrics-server EndpointSlice: %w", err)
	}
	svcPort := int32(443)
	apiSvc := &apiregv1.APIService{
		ObjectMeta: metav1.ObjectMeta{Name: "v1beta1.metrics.k8s.io"},
		Spec: apiregv1.APIServiceSpec{
			Service:               &apiregv1.ServiceReference{Namespace: ns, Name: "metrics-server", Port: &svcPort},
			Group:                 "metrics.k8s.io",
			Version:               "v1beta1",
			InsecureSkipTLSVerify: true,
			GroupPriorityMinimum:  100,
			VersionPriority:       100,
		},
	}
	if _, err := a.agg.ApiregistrationV1().APIServices().Create(ctx, apiSvc, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating the metrics APIService: %w", err)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		got, err := a.agg.ApiregistrationV1().APIServices().Get(ctx, apiSvc.Name, metav1.GetOptions{})
		if err == nil {
			for _, c := range got.Status.Conditions {
				if c.Type == apiregv1.Available && c.Status == apiregv1.ConditionTrue {
					log.Printf("metrics-server serving metrics.k8s.io")
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("interrupted")
		case died := <-sup.died:
			return fmt.Errorf("%s exited; see %s", died, filepath.Join(sup.stateDir, died+".log"))
		case <-time.After(time.Second):
		}
	}
	return fmt.Errorf("metrics.k8s.io not Available after 2m (see metrics-server.log and kube-apiserver.log)")
}
