//! Test kernels: Debian cloud kernels resolved from apt at run time and cached as
//! just a vmlinuz plus the decompressed virtio-net modules (the rest is dropped
//! to save disk).
//!
//! Cache layout: `<cache>/kernels/<series>/<package>/{vmlinuz,modules/*.ko,modules/load-order,.complete}`.
use crate::util::{self, file_name, remove_dir_if_exists, version_cmp};
use anyhow::{bail, Context, Result};
use clap::ValueEnum;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Series {
    #[value(name = "6.1")]
    V6_1,
    #[value(name = "6.12")]
    V6_12,
}

impl Series {
    pub const ALL: [Series; 2] = [Series::V6_1, Series::V6_12];

    pub fn name(self) -> &'static str {
        match self {
            Series::V6_1 => "6.1",
            Series::V6_12 => "6.12",
        }
    }

    fn apt_pattern(self) -> &'static str {
        match self {
            Series::V6_1 => r"^linux-image-6\.1\.0-.*-cloud-amd64-unsigned",
            Series::V6_12 => r"^linux-image-6\.12\..*-cloud-amd64-unsigned",
        }
    }

    /// virtio-net and its dependencies, in insmod order. On 6.1 the virtio core
    /// is modular too; on 6.12 it is built in. Missing ones are skipped (built in).
    fn net_modules(self) -> &'static [&'static str] {
        match self {
            Series::V6_1 => &[
                "virtio_ring",
                "virtio",
                "virtio_pci_legacy_dev",
                "virtio_pci_modern_dev",
                "virtio_pci",
                "failover",
                "net_failover",
                "virtio_net",
            ],
            Series::V6_12 => &["failover", "net_failover", "virtio_net"],
        }
    }
}

/// A cached kernel ready to boot.
pub struct Kernel {
    pub package: String,
    dir: PathBuf,
}

impl Kernel {
    pub fn vmlinuz(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }

    /// Directory of decompressed `.ko` files plus `load-order` (one name per line).
    pub fn modules_dir(&self) -> PathBuf {
        self.dir.join("modules")
    }
}

fn series_dir(series: Series) -> Result<PathBuf> {
    Ok(util::cache_dir()?.join("kernels").join(series.name()))
}

/// The newest completely cached kernel of a series, if any.
pub fn cached(series: Series) -> Result<Option<Kernel>> {
    let dir = series_dir(series)?;
    let Ok(entries) = fs::read_dir(&dir) else {
        return Ok(None);
    };
    let newest = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join(".complete").exists())
        .map(|e| file_name(&e.path()))
        .max_by(|a, b| version_cmp(a, b));
    Ok(newest.map(|package| Kernel { dir: dir.join(&package), package }))
}

/// Makes sure the newest kernel of the series is cached; returns a status line.
pub fn ensure(series: Series) -> Result<String> {
    let package = match newest_package(series) {
        Ok(p) => p,
        // Offline or broken apt: a previously cached kernel is still usable.
        Err(err) => match cached(series)? {
            Some(k) => return Ok(format!("ok ({}; could not check apt: {err:#})", k.package)),
            None => return Err(err),
        },
    };
    let dir = series_dir(series)?.join(&package);
    if dir.join(".complete").exists() {
        return Ok(format!("ok ({package})"));
    }
    install(series, &package, &dir)?;
    prune_except(&series_dir(series)?, &package)?;
    Ok(format!("installed {package}"))
}

/// Newest matching package name per apt, refreshing the lists once if none match.
fn newest_package(series: Series) -> Result<String> {
    let mut names = apt_search(series)?;
    if names.is_empty() {
        util::apt_update_once()?;
        names = apt_search(series)?;
    }
    names
        .into_iter()
        .max_by(|a, b| version_cmp(a, b))
        .with_context(|| format!("apt-cache finds no package matching {}", series.apt_pattern()))
}

fn apt_search(series: Series) -> Result<Vec<String>> {
    let out = util::output(Command::new("apt-cache").args(["search", series.apt_pattern()]))?;
    Ok(out.lines().filter_map(|l| l.split_whitespace().next()).map(str::to_owned).collect())
}

/// Downloads and unpacks the package in a scratch dir, keeps vmlinuz and the
/// network modules in `dir`, then deletes the scratch dir. `.complete` is
/// written last so an interrupted install is redone next time.
fn install(series: Series, package: &str, dir: &Path) -> Result<()> {
    let work = dir.with_file_name(format!(".work-{package}"));
    remove_dir_if_exists(&work)?;
    remove_dir_if_exists(dir)?;
    fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let result = extract_into(series, package, &work, dir);
    remove_dir_if_exists(&work)?;
    result?;
    fs::write(dir.join(".complete"), package)?;
    Ok(())
}

fn extract_into(series: Series, package: &str, work: &Path, dir: &Path) -> Result<()> {
    let deb = download(package, work)?;
    let tree = work.join("tree");
    util::run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    fs::create_dir_all(dir.join("modules"))?;
    let vmlinuz = find_vmlinuz(&tree)?;
    fs::copy(&vmlinuz, dir.join("vmlinuz")).with_context(|| format!("copying {}", vmlinuz.display()))?;
    copy_net_modules(series, &modules_root(&tree)?, &dir.join("modules"))
}

/// `apt-get download` into `work`; on failure (stale lists) refresh once and retry.
fn download(package: &str, work: &Path) -> Result<PathBuf> {
    let fetch = || util::run(Command::new("apt-get").args(["download", package]).current_dir(work));
    if fetch().is_err() {
        util::apt_update_once()?;
        fetch()?;
    }
    fs::read_dir(work)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .with_context(|| format!("apt-get download {package} produced no .deb"))
}

fn find_vmlinuz(tree: &Path) -> Result<PathBuf> {
    let boot = tree.join("boot");
    fs::read_dir(&boot)
        .with_context(|| format!("reading {}", boot.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| file_name(p).starts_with("vmlinuz-"))
        .with_context(|| format!("no vmlinuz-* in {}", boot.display()))
}

/// `lib/modules/<version>/kernel` (or under usr/, for merged-/usr packages).
fn modules_root(tree: &Path) -> Result<PathBuf> {
    for base in ["lib/modules", "usr/lib/modules"] {
        let Ok(entries) = fs::read_dir(tree.join(base)) else {
            continue;
        };
        if let Some(version) = entries.filter_map(|e| e.ok()).next() {
            return Ok(version.path().join("kernel"));
        }
    }
    bail!("no lib/modules/<version> in {}", tree.display())
}

/// Decompresses the series' network modules into `dest` and records the load order.
fn copy_net_modules(series: Series, root: &Path, dest: &Path) -> Result<()> {
    let files = util::walk_files(root)?;
    let mut order = String::new();
    for name in series.net_modules() {
        let Some(src) = find_module(&files, name) else {
            continue; // built into this kernel
        };
        let ko = decompressed(src)?;
        fs::copy(&ko, dest.join(format!("{name}.ko"))).with_context(|| format!("copying {}", ko.display()))?;
        order.push_str(name);
        order.push('\n');
    }
    fs::write(dest.join("load-order"), order)?;
    Ok(())
}

fn find_module<'a>(files: &'a [PathBuf], name: &str) -> Option<&'a PathBuf> {
    let (plain, xz) = (format!("{name}.ko"), format!("{name}.ko.xz"));
    files.iter().find(|p| {
        let f = file_name(p);
        f == plain || f == xz
    })
}

/// The guest has no xz-capable insmod, so `.ko.xz` is unpacked on the host.
fn decompressed(src: &Path) -> Result<PathBuf> {
    if src.extension().is_some_and(|e| e == "xz") {
        util::run(Command::new("xz").arg("-dkf").arg(src))?;
        return Ok(src.with_extension(""));
    }
    Ok(src.to_path_buf())
}

/// Drops older cached kernels of the series once the newest is in place.
fn prune_except(series_dir: &Path, keep: &str) -> Result<()> {
    for entry in fs::read_dir(series_dir)? {
        let path = entry?.path();
        if path.is_dir() && file_name(&path) != keep {
            remove_dir_if_exists(&path)?;
        }
    }
    Ok(())
}

/// The cached kernel for a series, running the full setup first if there is none.
pub fn require(series: Series) -> Result<Kernel> {
    if let Some(k) = cached(series)? {
        return Ok(k);
    }
    eprintln!("xtask: kernel {} not cached; running setup", series.name());
    crate::setup::run()?;
    cached(series)?.with_context(|| format!("setup did not cache a {} kernel", series.name()))
}
