package main

// One real node on this machine: containerd (with runc and the CNI bridge
// plugin) runs the pods, kubelet registers the node and drives containerd
// over CRI, and kube-proxy (iptables mode) makes Services reachable from pods
// and from the host. Pods live on the bridge chorus0 (10.244.0.0/24); the
// host's address on it, 10.244.0.1, is where pods reach the API server and
// the test PostgreSQL.
//
// Everything the node leaves on the machine (processes, mounts, network
// namespaces, veths, iptables rules, cgroups) is removed by cleanupNode, which
// runs at stop and again at the next start, in case a run was killed.

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const (
	nodeName     = "chorus-node"
	bridgeName   = "chorus0"
	bridgeIP     = "10.244.0.1"
	podSubnet    = "10.244.0.0/24"
	pauseImage   = "localhost/chorus/pause:3.10"
	nodeLockFile = "/run/chorus-node.lock"
)

// nodeConfig is what the rest of the launcher needs to know about the node.
type nodeConfig struct {
	hostIP string
	lock   *os.File
}

// prepareNode takes the machine-wide node lock (one node cluster per
// machine: they share the bridge and iptables), removes what an earlier run
// left, and creates the bridge so the API server can listen on it.
func prepareNode(stateDir string) (*nodeConfig, error) {
	if os.Geteuid() != 0 {
		return nil, errors.New("the node needs root (network namespaces, mounts, iptables); run as root or pass --node=false")
	}
	for _, tool := range []string{"ip", "iptables", "iptables-save", "iptables-restore", "mount"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%s is missing (Debian packages iproute2, iptables): %w", tool, err)
		}
	}
	lock, err := os.OpenFile(nodeLockFile, os.O_CREATE|os.O_RDWR, 0o600)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(lock.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		owner, _ := os.ReadFile(nodeLockFile + ".owner")
		lock.Close()
		return nil, fmt.Errorf("another Chorus node cluster is running on this machine (state dir %s); stop it first (make cluster-down, or scripts/cluster.sh down DIR)", strings.TrimSpace(string(owner)))
	}
	_ = os.WriteFile(nodeLockFile+".owner", []byte(stateDir+"\n"), 0o600)
	if cleanupNode(stateDir) {
		log.Printf("removed what an earlier node run left behind (processes, mounts, network namespaces, iptables rules)")
	}
	for _, kv := range [][2]string{
		{"/proc/sys/net/ipv4/ip_forward", "1"},
		{"/proc/sys/net/bridge/bridge-nf-call-iptables", "1"},
		{"/proc/sys/net/ipv4/conf/all/route_localnet", "1"},
	} {
		if err := os.WriteFile(kv[0], []byte(kv[1]), 0o644); err != nil {
			return nil, fmt.Errorf("setting %s: %w", kv[0], err)
		}
	}
	for _, args := range [][]string{
		{"link", "add", bridgeName, "type", "bridge"},
		{"addr", "add", bridgeIP + "/24", "dev", bridgeName},
		{"link", "set", bridgeName, "up"},
	} {
		if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	return &nodeConfig{hostIP: bridgeIP, lock: lock}, nil
}

// release drops the node lock.
func (n *nodeConfig) release() {
	_ = os.Remove(nodeLockFile + ".owner")
	_ = n.lock.Close()
}

// startNode starts containerd, imports the sandbox image and the images in
// imageDir, then kubelet and kube-proxy, and waits until the node is Ready.
func startNode(ctx context.Context, sup *supervisor, binDir, stateDir, imageDir, apiURL string, p *pkiFiles, a *admin) error {
	dir := filepath.Join(stateDir, "node")
	for _, d := range []string{"containerd", "cni/net.d", "cni/ipam", "kubelet"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o700); err != nil {
			return err
		}
	}
	sock := filepath.Join(dir, "containerd", "containerd.sock")
	if err := startContainerd(ctx, sup, binDir, dir, sock); err != nil {
		return err
	}
	if err := importImages(ctx, binDir, sock, imageDir); err != nil {
		return err
	}
	if err := startKubelet(ctx, sup, binDir, dir, stateDir, sock, apiURL, p); err != nil {
		return err
	}
	if err := startKubeProxy(sup, binDir, stateDir, apiURL, p); err != nil {
		return err
	}
	log.Printf("waiting for node %s to be Ready", nodeName)
	if err := a.waitNodeReady(ctx, sup, nodeName, 3*time.Minute); err != nil {
		return err
	}
	log.Printf("node %s Ready", nodeName)
	return nil
}

func startContainerd(ctx context.Context, sup *supervisor, binDir, dir, sock string) error {
	cni := filepath.Join(dir, "cni")
	conflist := map[string]any{
		"cniVersion": "1.0.0",
		"name":       "chorus",
		"plugins": []any{
			map[string]any{
				"type": "bridge", "bridge": bridgeName, "isGateway": true, "ipMasq": true, "hairpinMode": true,
				"ipam": map[string]any{
					"type":    "host-local",
					"ranges":  [][]map[string]string{{{"subnet": podSubnet, "gateway": bridgeIP}}},
					"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
					"dataDir": filepath.Join(cni, "ipam"),
				},
			},
			map[string]any{"type": "portmap", "capabilities": map[string]bool{"portMappings": true}},
		},
	}
	b, _ := json.MarshalIndent(conflist, "", "  ")
	if err := os.WriteFile(filepath.Join(cni, "net.d", "10-chorus.conflist"), b, 0o600); err != nil {
		return err
	}
	config := fmt.Sprintf(`version = 3
root = %q
state = %q
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.erofs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = %q

[ttrpc]
  address = %q

[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = %q

[plugins.'io.containerd.cri.v1.runtime']
  # This machine withholds CAP_SYS_RESOURCE, so no process may lower its
  # oom_score_adj (the sandbox's -998 fails in runc): never go below ours.
  restrict_oom_score_adj = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = %q
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = [%q]
    conf_dir = %q
`, filepath.Join(dir, "containerd", "root"), filepath.Join(dir, "containerd", "state"), sock, sock+".ttrpc",
		pauseImage, filepath.Join(binDir, "runc"), filepath.Join(binDir, "cni"), filepath.Join(cni, "net.d"))
	configPath := filepath.Join(dir, "containerd", "config.toml")
	if err := os.WriteFile(configPath, []byte(config), 0o600); err != nil {
		return err
	}
	// containerd finds containerd-shim-runc-v2 on PATH.
	sup.env = append(os.Environ(), "PATH="+binDir+":"+os.Getenv("PATH"))
	err := sup.start("containerd", filepath.Join(binDir, "containerd"), "--config", configPath, "--log-level", "warn")
	sup.env = nil
	if err != nil {
		return err
	}
	deadline := time.Now().Add(time.Minute)
	for {
		out, err := exec.CommandContext(ctx, filepath.Join(binDir, "ctr"), "--address", sock, "version").CombinedOutput()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("containerd did not answer within a minute: %s", out)
		}
		select {
		case name := <-sup.died:
			return fmt.Errorf("%s exited; see %s", name, filepath.Join(sup.stateDir, name+".log"))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// importImages loads the sandbox image and every *.tar in imageDir into
// containerd's k8s.io namespace, where kubelet's CRI calls look.
func importImages(ctx context.Context, binDir, sock, imageDir string) error {
	tars := []string{filepath.Join(binDir, "images", "pause.tar")}
	if imageDir != "" {
		more, _ := filepath.Glob(filepath.Join(imageDir, "*.tar"))
		tars = append(tars, more...)
	}
	for _, tar := range tars {
		out, err := exec.CommandContext(ctx, filepath.Join(binDir, "ctr"), "--address", sock, "-n", "k8s.io",
			"images", "import", "--no-unpack=false", tar).CombinedOutput()
		if err != nil {
			return fmt.Errorf("importing %s: %v: %s", tar, err, out)
		}
		log.Printf("imported %s", filepath.Base(tar))
	}
	return nil
}

func startKubelet(ctx context.Context, sup *supervisor, binDir, dir, stateDir, sock, apiURL string, p *pkiFiles) error {
	kubeconfig, err := componentKubeconfig(p, stateDir, apiURL, "kubelet", "system:node:"+nodeName, "system:nodes")
	if err != nil {
		return err
	}
	serving, err := p.servingIdentity("kubelet-serving", nodeName, net.ParseIP(bridgeIP), net.ParseIP("127.0.0.1"))
	if err != nil {
		return err
	}
	port, err := freePortOn(bridgeIP)
	if err != nil {
		return err
	}
	healthz, err := freePort()
	if err != nil {
		return err
	}
	// The machines Chorus is built on boot with cgroup v1; kubelet 1.35+
	// refuses that unless failCgroupV1 is false, and v1 needs the cgroupfs
	// driver (no systemd runs here).
	config := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://%s
address: %s
port: %d
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: %d
tlsCertFile: %s
tlsPrivateKeyFile: %s
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: %s}
authorization:
  mode: Webhook
failSwapOn: false
# Without CAP_SYS_RESOURCE (withheld here) kubelet cannot lower its own score.
oomScoreAdj: 0
clusterDomain: cluster.local
resolvConf: /etc/resolv.conf
maxPods: 200
serializeImagePulls: false
imageGCHighThresholdPercent: 100
evictionHard: {"memory.available": "100Mi", "nodefs.available": "1%%", "imagefs.available": "1%%"}
syncFrequency: 10s
nodeStatusUpdateFrequency: 5s
shutdownGracePeriod: 0s
`, sock, bridgeIP, port, healthz, serving.certFile, serving.keyFile, p.caCert)
	configPath := filepath.Join(dir, "kubelet-config.yaml")
	if err := os.WriteFile(configPath, []byte(config), 0o600); err != nil {
		return err
	}
	err = sup.start("kubelet", filepath.Join(binDir, "kubelet"),
		"--config="+configPath,
		"--kubeconfig="+kubeconfig,
		"--root-dir="+filepath.Join(dir, "kubelet"),
		"--hostname-override="+nodeName,
		"--node-ip="+bridgeIP,
		"--node-labels=chorus.dev/node-kind=real",
		"--v=1",
	)
	if err != nil {
		return err
	}
	return waitHTTP(ctx, sup, insecureClient(), fmt.Sprintf("http://127.0.0.1:%d/healthz", healthz), 2*time.Minute)
}

func startKubeProxy(sup *supervisor, binDir, stateDir, apiURL string, p *pkiFiles) error {
	kubeconfig, err := componentKubeconfig(p, stateDir, apiURL, "kube-proxy", "system:kube-proxy", "system:node-proxier")
	if err != nil {
		return err
	}
	metrics, err := freePort()
	if err != nil {
		return err
	}
	healthz, err := freePort()
	if err != nil {
		return err
	}
	return sup.start("kube-proxy", filepath.Join(binDir, "kube-proxy"),
		"--kubeconfig="+kubeconfig,
		"--proxy-mode=iptables",
		"--hostname-override="+nodeName,
		"--cluster-cidr="+clusterCIDR,
		fmt.Sprintf("--metrics-bind-address=127.0.0.1:%d", metrics),
		fmt.Sprintf("--healthz-bind-address=127.0.0.1:%d", healthz),
		// Leave the machine's conntrack sysctls alone, and the OOM score
		// (lowering it needs CAP_SYS_RESOURCE, which this machine withholds).
		"--conntrack-max-per-core=0",
		"--oom-score-adj=0",
		"--v=1",
	)
}

// cleanupNode removes everything a node run leaves on the machine: pod
// processes and their cgroups, containerd shims, mounts under the state
// directory and CNI network namespaces, the bridge and its veths, and the
// iptables rules of kube-proxy and the CNI plugins. It reports whether it
// found anything.
func cleanupNode(stateDir string) bool {
	found := false
	// Pod processes: everything in kubelet's cgroups.
	for _, pid := range cgroupProcs("kubepods") {
		found = true
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
	// containerd shims of this state directory.
	for _, pid := range pidsWithCmdline(filepath.Join(stateDir, "node")) {
		found = true
		_ = syscall.Kill(pid, syscall.SIGKILL)
		waitGone(pid, 5*time.Second)
	}
	time.Sleep(200 * time.Millisecond)
	removeCgroups("kubepods")
	// Mounts: the state directory's (overlay snapshots, pod volumes, shm) and
	// the network namespaces CNI made.
	for _, m := range mountsUnder(filepath.Join(stateDir, "node"), "/run/netns/cni-", "/var/run/netns/cni-") {
		found = true
		if err := syscall.Unmount(m, 0); err != nil {
			_ = syscall.Unmount(m, syscall.MNT_DETACH)
		}
	}
	for _, dir := range []string{"/run/netns", "/var/run/netns"} {
		entries, _ := os.ReadDir(dir)
		for _, e := range entries {
			if strings.HasPrefix(e.Name(), "cni-") {
				found = true
				_ = os.Remove(filepath.Join(dir, e.Name()))
			}
		}
	}
	if exec.Command("ip", "link", "show", bridgeName).Run() == nil {
		found = true
		_ = exec.Command("ip", "link", "del", bridgeName).Run()
	}
	if removeIptablesRules() {
		found = true
	}
	_ = os.RemoveAll(filepath.Join(stateDir, "node"))
	return found
}

// cgroupProcs lists the processes in every cgroup below name, in each
// cgroup v1 hierarchy.
func cgroupProcs(name string) []int {
	seen := map[int]bool{}
	var pids []int
	roots, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", name))
	for _, root := range roots {
		_ = filepath.Walk(root, func(path string, info os.FileInfo, err error) error {
			if err != nil || info.Name() != "cgroup.procs" {
				return nil
			}
			f, err := os.Open(path)
			if err != nil {
				return nil
			}
			defer f.Close()
			sc := bufio.NewScanner(f)
			for sc.Scan() {
				if pid, err := strconv.Atoi(strings.TrimSpace(sc.Text())); err == nil && !seen[pid] {
					seen[pid] = true
					pids = append(pids, pid)
				}
			}
			return nil
		})
	}
	return pids
}

// removeCgroups removes the cgroup directories below and including name, in
// every hierarchy, deepest first.
func removeCgroups(name string) {
	roots, _ := filepath.Glob(filepath.Join("/sys/fs/cgroup", "*", name))
	for _, root := range roots {
		var dirs []string
		_ = filepath.Walk(root, func(path string, info os.FileInfo, err error) error {
			if err == nil && info.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		sort.Slice(dirs, func(i, j int) bool { return len(dirs[i]) > len(dirs[j]) })
		for _, d := range dirs {
			_ = syscall.Rmdir(d)
		}
	}
}

// pidsWithCmdline lists processes whose command line contains needle.
func pidsWithCmdline(needle string) []int {
	var pids []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		if cmdlineHas(pid, needle) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// mountsUnder lists mount points that start with any prefix, deepest first.
func mountsUnder(prefixes ...string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var mounts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := strings.ReplaceAll(fields[4], `\040`, " ")
		for _, p := range prefixes {
			if strings.HasPrefix(mp, p) {
				mounts = append(mounts, mp)
				break
			}
		}
	}
	sort.Slice(mounts, func(i, j int) bool { return len(mounts[i]) > len(mounts[j]) })
	return mounts
}

// removeIptablesRules drops every chain and rule of kube-proxy (KUBE-*) and
// the CNI plugins (CNI-*), keeping all others, with one iptables-restore per
// table set. It reports whether there were any.
func removeIptablesRules() bool {
	found := false
	for _, family := range []string{"iptables", "ip6tables"} {
		out, err := exec.Command(family + "-save").Output()
		if err != nil {
			continue
		}
		kept, removed := withoutNodeRules(string(out))
		if !removed {
			continue
		}
		found = true
		restore := exec.Command(family + "-restore")
		restore.Stdin = strings.NewReader(kept)
		if out, err := restore.CombinedOutput(); err != nil {
			log.Printf("%s-restore: %v: %s", family, err, out)
		}
	}
	return found
}

// withoutNodeRules drops, from iptables-save output, every chain declaration
// and rule that names a kube-proxy (KUBE-*) or CNI (CNI-*) chain, and keeps
// everything else, table headers and COMMIT lines included. It reports
// whether anything was dropped.
func withoutNodeRules(save string) (string, bool) {
	var kept []string
	removed := false
	for _, line := range strings.Split(save, "\n") {
		if strings.Contains(line, "KUBE-") || strings.Contains(line, "CNI-") {
			removed = true
			continue
		}
		kept = append(kept, line)
	}
	return strings.Join(kept, "\n"), removed
}
