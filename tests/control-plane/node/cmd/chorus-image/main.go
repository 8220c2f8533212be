// Command chorus-image writes a single-layer container image, from a root
// file-system directory, as a tarball that `ctr images import` (and `docker
// load`) accept. Images are built this way because the machines Chorus is
// built on have no Docker engine and no registry to pull base images from.
//
// The image format is go-containerregistry's (the library behind crane); this
// program only chooses the layer's contents and the image config:
//
//	chorus-image --rootfs DIR --tag REF [--tag REF...] --out FILE \
//	    --entrypoint /usr/local/bin/chat-runtime --cmd serve \
//	    --user 65532:65532 --port 8080 --port 9090
//
// Every file in the layer is owned by root, with its mode kept and its
// modification time set to the Unix epoch, so the same inputs give the same
// image digest.
package main

import (
	"archive/tar"
	"bytes"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

type list []string

func (l *list) String() string     { return strings.Join(*l, ",") }
func (l *list) Set(v string) error { *l = append(*l, v); return nil }

func main() {
	var (
		rootfs                = flag.String("rootfs", "", "directory whose contents become the image's only layer (required)")
		out                   = flag.String("out", "", "tarball to write (required)")
		entrypoint            = flag.String("entrypoint", "", "entrypoint executable")
		user                  = flag.String("user", "", "user[:group] the container runs as")
		tags, cmd, ports, env list
	)
	flag.Var(&tags, "tag", "image reference, e.g. ghcr.io/chorus-dev/chat-runtime:0.1.0 (required, repeatable: one image under several names)")
	flag.Var(&cmd, "cmd", "default argument (repeatable)")
	flag.Var(&ports, "port", "exposed TCP port (repeatable)")
	flag.Var(&env, "env", "KEY=VALUE environment entry (repeatable)")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("chorus-image: ")
	if *rootfs == "" || len(tags) == 0 || *out == "" {
		log.Fatal("--rootfs, --tag and --out are required")
	}
	if err := run(*rootfs, tags, *out, *entrypoint, *user, cmd, ports, env); err != nil {
		log.Fatalf("error: %v", err)
	}
}

func run(rootfs string, tags []string, out, entrypoint, user string, cmd, ports, env []string) error {
	refs := map[name.Reference]v1.Image{}
	layerTar, err := tarDirectory(rootfs)
	if err != nil {
		return fmt.Errorf("packing %s: %w", rootfs, err)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return err
	}
	img, err := mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), layer)
	if err != nil {
		return err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return err
	}
	cfg = cfg.DeepCopy()
	cfg.Architecture = "amd64"
	cfg.OS = "linux"
	cfg.Created = v1.Time{Time: time.Unix(0, 0).UTC()}
	cfg.Config.User = user
	cfg.Config.Cmd = cmd
	if entrypoint != "" {
		cfg.Config.Entrypoint = []string{entrypoint}
	}
	cfg.Config.Env = append([]string{"PATH=/usr/local/bin:/usr/bin:/bin"}, env...)
	if len(ports) > 0 {
		cfg.Config.ExposedPorts = map[string]struct{}{}
		for _, p := range ports {
			cfg.Config.ExposedPorts[p+"/tcp"] = struct{}{}
		}
	}
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		return err
	}
	for _, tag := range tags {
		ref, err := name.NewTag(tag)
		if err != nil {
			return fmt.Errorf("--tag %q: %w", tag, err)
		}
		refs[ref] = img
	}
	if err := tarball.MultiRefWriteToFile(out, refs); err != nil {
		return fmt.Errorf("writing %s: %w", out, err)
	}
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	log.Printf("wrote %s (%s, %s)", out, strings.Join(tags, ", "), digest)
	return nil
}

// tarDirectory returns a tar of dir's contents, paths relative to dir, owned
// by root, with epoch modification times.
func tarDirectory(dir string) ([]byte, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		if err != nil || rel == "." {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if info.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(path); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		if d.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uid, hdr.Gid, hdr.Uname, hdr.Gname = 0, 0, "root", "root"
		hdr.ModTime, hdr.AccessTime, hdr.ChangeTime = time.Unix(0, 0), time.Time{}, time.Time{}
		hdr.Format = tar.FormatPAX
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if info.Mode().IsRegular() {
			f, err := os.Open(path)
			if err != nil {
				return err
			}
			defer f.Close()
			if _, err := io.Copy(tw, f); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}
