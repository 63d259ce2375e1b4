//! Reads struct member offsets from the running kernel's BTF.
//!
//! Rust eBPF cannot emit CO-RE relocations, so the programs get every offset they need from
//! here at load time (as frozen .rodata). Only the parts of the BTF format needed to find a
//! struct by name and walk its members (including anonymous unions and structs) are parsed.

use guard_common::Offsets;
use std::collections::HashMap;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum BtfError {
    #[error("BTF is truncated or malformed at byte {0}")]
    Malformed(usize),
    #[error("BTF has an unknown type kind {kind} at type id {id}")]
    UnknownKind { kind: u32, id: usize },
    #[error("the kernel's BTF has no struct {0}")]
    NoStruct(String),
    #[error("struct {0} has no member {1} in the kernel's BTF")]
    NoMember(String, String),
}

const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_FUNC: u32 = 12;

struct Type {
    name_off: u32,
    kind: u32,
    kind_flag: bool,
    /// size_or_type: the referenced type for typedefs and qualifiers.
    ty: u32,
    /// Members of structs and unions: (name offset, type id, bit offset).
    members: Vec<(u32, u32, u32)>,
}

pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    by_name: HashMap<String, usize>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).ok_or(BtfError::Malformed(at))
}

impl Btf {
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if data.len() < 24 || data[0..2] != [0x9f, 0xeb] {
            return Err(BtfError::Malformed(0));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let strings = data
            .get(hdr_len + str_off..hdr_len + str_off + str_len)
            .ok_or(BtfError::Malformed(hdr_len + str_off))?
            .to_vec();
        let start = hdr_len + type_off;
        let end = start + type_len;
        if end > data.len() {
            return Err(BtfError::Malformed(end));
        }
        // Type id 0 is "void".
        let mut types = vec![Type { name_off: 0, kind: 0, kind_flag: false, ty: 0, members: vec![] }];
        let mut at = start;
        while at < end {
            let name_off = u32_at(data, at)?;
            let info = u32_at(data, at + 4)?;
            let vlen = (info & 0xffff) as usize;
            let kind = (info >> 24) & 0x1f;
            let kind_flag = info >> 31 == 1;
            let ty = u32_at(data, at + 8)?;
            at += 12;
            let mut members = vec![];
            let extra = match kind {
                1 | 14 | 17 => 4,
                2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0,
                3 => 12,
                KIND_STRUCT | KIND_UNION => {
                    for i in 0..vlen {
                        let m = at + i * 12;
                        members.push((u32_at(data, m)?, u32_at(data, m + 4)?, u32_at(data, m + 8)?));
                    }
                    vlen * 12
                }
                6 | 13 => vlen * 8,
                15 | 19 => vlen * 12,
                _ => return Err(BtfError::UnknownKind { kind, id: types.len() }),
            };
            at += extra;
            types.push(Type { name_off, kind, kind_flag, ty, members });
        }
        let mut btf = Btf { types, strings, by_name: HashMap::new() };
        for (id, t) in btf.types.iter().enumerate() {
            if t.kind == KIND_STRUCT && t.name_off != 0 {
                let name = btf.name(t.name_off).to_string();
                btf.by_name.entry(name).or_insert(id);
            }
        }
        Ok(btf)
    }

    pub fn from_sys_fs() -> anyhow::Result<Self> {
        let data = std::fs::read("/sys/kernel/btf/vmlinux").map_err(|e| {
            anyhow::anyhow!("cannot read /sys/kernel/btf/vmlinux: {e} (the kernel needs CONFIG_DEBUG_INFO_BTF=y)")
        })?;
        Ok(Self::parse(&data)?)
    }

    fn name(&self, off: u32) -> &str {
        let rest = self.strings.get(off as usize..).unwrap_or(&[]);
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// Whether the kernel has a function of this name (an LSM hook `h` exists where
    /// `bpf_lsm_h` does).
    pub fn has_func(&self, name: &str) -> bool {
        self.types.iter().any(|t| t.kind == KIND_FUNC && self.name(t.name_off) == name)
    }

    /// Byte offset of `member` in `struct name`, looking inside anonymous unions and structs.
    pub fn offset(&self, name: &str, member: &str) -> Result<u32, BtfError> {
        let id = *self.by_name.get(name).ok_or_else(|| BtfError::NoStruct(name.into()))?;
        self.find(id, member).map(|bits| bits / 8).ok_or_else(|| BtfError::NoMember(name.into(), member.into()))
    }

    fn find(&self, id: usize, member: &str) -> Option<u32> {
        let t = self.types.get(id)?;
        for &(name_off, ty, off) in &t.members {
            let bits = if t.kind_flag { off & 0xff_ffff } else { off };
            if name_off == 0 {
                let inner = self.resolve(ty as usize)?;
                if let Some(o) = self.find(inner, member) {
                    return Some(bits + o);
                }
            } else if self.name(name_off) == member {
                return Some(bits);
            }
        }
        None
    }

    /// Follows typedefs and qualifiers to the struct or union behind an anonymous member.
    fn resolve(&self, mut id: usize) -> Option<usize> {
        for _ in 0..16 {
            let t = self.types.get(id)?;
            match t.kind {
                KIND_STRUCT | KIND_UNION => return Some(id),
                8..=11 | 18 => id = self.ty_of(id)?,
                _ => return None,
            }
        }
        None
    }

    fn ty_of(&self, id: usize) -> Option<usize> {
        self.types.get(id).map(|t| t.ty as usize)
    }

    /// Every offset the programs need.
    pub fn guard_offsets(&self) -> Result<Offsets, BtfError> {
        use guard_common::sb_mounts_layout::{CHAIN, LIST, UNKNOWN};
        // How the superblock's mounts are linked (changed in 6.15); an unknown layout makes
        // the xattr hooks deny watched tasks rather than the agent refuse to start.
        let (sb_mounts_layout, mount_instance, mount_next) = if let Ok(o) = self.offset("mount", "mnt_instance") {
            (LIST, o, 0)
        } else if let Ok(o) = self.offset("mount", "mnt_next_for_sb") {
            (CHAIN, 0, o)
        } else {
            (UNKNOWN, 0, 0)
        };
        Ok(Offsets {
            file_f_path: self.offset("file", "f_path")?,
            file_f_mode: self.offset("file", "f_mode")?,
            binprm_file: self.offset("linux_binprm", "file")?,
            task_pid: self.offset("task_struct", "pid")?,
            task_tgid: self.offset("task_struct", "tgid")?,
            task_real_parent: self.offset("task_struct", "real_parent")?,
            task_flags: self.offset("task_struct", "flags")?,
            path_mnt: self.offset("path", "mnt")?,
            path_dentry: self.offset("path", "dentry")?,
            dentry_parent: self.offset("dentry", "d_parent")?,
            dentry_name: self.offset("dentry", "d_name")?,
            mount_mnt: self.offset("mount", "mnt")?,
            mount_parent: self.offset("mount", "mnt_parent")?,
            mount_mountpoint: self.offset("mount", "mnt_mountpoint")?,
            vfsmount_root: self.offset("vfsmount", "mnt_root")?,
            regs_si: self.offset("pt_regs", "si")?,
            regs_dx: self.offset("pt_regs", "dx")?,
            regs_orig_ax: self.offset("pt_regs", "orig_ax")?,
            _pad: 0,
            mount_mnt_ns: self.offset("mount", "mnt_ns")?,
            // 0 for anonymous namespaces: `seq` up to 6.17, `ns.ns_id` from 6.18 on.
            mnt_ns_seq: match self.offset("mnt_namespace", "seq") {
                Ok(o) => o,
                Err(_) => self.offset("mnt_namespace", "ns")? + self.offset("ns_common", "ns_id")?,
            },
            unix_sock_path: self.offset("unix_sock", "path")?,
            socket_sk: self.offset("socket", "sk")?,
            msghdr_name: self.offset("msghdr", "msg_name")?,
            msghdr_namelen: self.offset("msghdr", "msg_namelen")?,
            dentry_sb: self.offset("dentry", "d_sb")?,
            sb_mounts: self.offset("super_block", "s_mounts")?,
            mount_instance,
            task_nsproxy: self.offset("task_struct", "nsproxy")?,
            nsproxy_mnt_ns: self.offset("nsproxy", "mnt_ns")?,
            mount_next,
            sb_mounts_layout,
            dentry_hash_pprev: self.offset("dentry", "d_hash")? + self.offset("hlist_bl_node", "pprev")?,
            binprm_argc: self.offset("linux_binprm", "argc")?,
            binprm_filename: self.offset("linux_binprm", "filename")?,
            binprm_interp: self.offset("linux_binprm", "interp")?,
            task_mm: self.offset("task_struct", "mm")?,
            mm_arg_start: self.offset("mm_struct", "arg_start")?,
            mm_start_stack: self.offset("mm_struct", "start_stack")?,
            mm_exe_file: self.offset("mm_struct", "exe_file")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a tiny BTF blob: struct inner { int a; int b; }, struct outer { int x; union {
    /// struct inner; } (anonymous) } to check member and anonymous-member offsets.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0inner\0a\0b\0outer\0x\0".to_vec();
        let s = |n: &str| {
            strings.windows(n.len() + 1).position(|w| &w[..n.len()] == n.as_bytes() && w[n.len()] == 0).unwrap() as u32
        };
        let mut t = vec![];
        let mut ty = |name: u32, info: u32, size: u32, extra: &[u32]| {
            for v in [name, info, size].iter().chain(extra) {
                t.extend_from_slice(&v.to_le_bytes());
            }
        };
        // 1: int
        ty(s("int"), 1 << 24, 4, &[32]);
        // 2: struct inner { a @0, b @32 bits }
        ty(s("inner"), (4 << 24) | 2, 8, &[s("a"), 1, 0, s("b"), 1, 32]);
        // 3: struct outer { x @0, <anon inner> @64 bits }
        ty(s("outer"), (4 << 24) | 2, 16, &[s("x"), 1, 0, 0, 2, 64]);
        let mut out = vec![0x9f, 0xeb, 1, 0];
        for v in [24u32, 0, t.len() as u32, t.len() as u32, strings.len() as u32] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend(t);
        out.extend(strings);
        out
    }

    #[test]
    fn finds_direct_and_anonymous_members() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.offset("outer", "x").unwrap(), 0);
        assert_eq!(btf.offset("outer", "b").unwrap(), 12);
        assert_eq!(btf.offset("inner", "b").unwrap(), 4);
        assert!(matches!(btf.offset("outer", "zz"), Err(BtfError::NoMember(..))));
        assert!(matches!(btf.offset("nope", "x"), Err(BtfError::NoStruct(..))));
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"not btf at all, clearly not").is_err());
        let mut b = blob();
        b.truncate(30);
        assert!(Btf::parse(&b).is_err());
    }

    #[test]
    fn reads_this_kernels_btf_when_present() {
        // The host kernel has BTF even though it cannot load LSM programs.
        let Ok(btf) = Btf::from_sys_fs() else {
            eprintln!("SKIPPED: /sys/kernel/btf/vmlinux not readable here");
            return;
        };
        let o = btf.guard_offsets().unwrap();
        assert!(o.file_f_path > 0 && o.task_tgid > o.task_pid - 1);
        assert!(o.binprm_interp > o.binprm_filename && o.task_mm > 0 && o.mm_start_stack > 0 && o.mm_exe_file > 0);
        // The xattr hooks know how this kernel links a superblock's mounts.
        assert_ne!(o.sb_mounts_layout, guard_common::sb_mounts_layout::UNKNOWN);
    }
}
