//! The system calls that build a sandbox, behind a trait so the namespace
//! and mount sequence is checked by a recording fake without root.

use super::overlay;
use super::scaffold::resolve_mount_point;
use rustix::fs::StatVfsMountFlags;
use rustix::mount::{MountFlags, MountPropagationFlags, UnmountFlags};
use rustix::thread::UnshareFlags;
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Namespace and mount operations, one method per kind of step.
pub(crate) trait Syscall {
    /// Moves the calling thread into new namespaces.
    fn unshare(&self, flags: UnshareFlags) -> io::Result<()>;
    /// Makes every mount at and under `target` private (`MS_REC|MS_PRIVATE`).
    fn make_private(&self, target: &Path) -> io::Result<()>;
    /// Mounts a new instance of a pseudo filesystem (`proc`, `tmpfs`).
    fn mount_fs(
        &self,
        fstype: &str,
        target: &Path,
        flags: MountFlags,
        data: &str,
    ) -> io::Result<()>;
    /// Bind-mounts `source` onto `target`.
    fn bind(&self, source: &Path, target: &Path, recursive: bool) -> io::Result<()>;
    /// Sets the per-mount flags of an existing bind mount to `flags`
    /// (`RDONLY`, `NOSUID`, ...) plus the ones it has that a user namespace
    /// locks (`NOSUID`, `NODEV`, `NOEXEC` and the atime flags).
    fn remount_bind(&self, target: &Path, flags: MountFlags) -> io::Result<()>;
    /// Finds (creating what is missing: directories, and an empty file last
    /// when `file`) where `target`, absolute in the image, lands when `root`
    /// is `/`, and returns that host path.
    fn mount_point(&self, root: &Path, target: &str, file: bool) -> io::Result<PathBuf>;
    /// Mounts an overlay of `lower` with `upper` and `work` on `target`.
    fn mount_overlay(
        &self,
        lower: &Path,
        upper: &Path,
        work: &Path,
        target: &Path,
    ) -> io::Result<()>;
    /// Copies `source` to a new file `dest` with the given mode and owner.
    fn install_file(
        &self,
        source: &Path,
        dest: &Path,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> io::Result<()>;
    /// Removes a file (a bind mount made from it stays).
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Lazily unmounts `target` (`MNT_DETACH`).
    fn unmount_detach(&self, target: &Path) -> io::Result<()>;
    /// `pivot_root(new_root, put_old)`.
    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> io::Result<()>;
    /// Changes the working directory.
    fn chdir(&self, path: &Path) -> io::Result<()>;
    /// Creates one directory with `mode` (before umask).
    fn mkdir(&self, path: &Path, mode: u32) -> io::Result<()>;
    /// Creates a directory and its missing parents with `mode` (before umask).
    fn mkdir_all(&self, path: &Path, mode: u32) -> io::Result<()>;
    /// Creates an empty regular file, to serve as a bind-mount target.
    fn create_file(&self, path: &Path, mode: u32) -> io::Result<()>;
    /// Creates a symbolic link at `link` pointing to `target`.
    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()>;
    /// Sets the hostname of the current UTS namespace.
    fn set_hostname(&self, name: &str) -> io::Result<()>;
    /// Brings the loopback interface of the current network namespace up.
    fn loopback_up(&self) -> io::Result<()>;
    /// Sets the supplementary groups of the calling thread.
    fn set_groups(&self, gids: &[u32]) -> io::Result<()>;
    /// Sets the real, effective and saved gid of the calling thread.
    fn set_gid(&self, gid: u32) -> io::Result<()>;
    /// Sets the real, effective and saved uid of the calling thread.
    fn set_uid(&self, uid: u32) -> io::Result<()>;
    /// Drops every capability outside `keep` (a `CAP_*` bit set) from the
    /// bounding, effective and permitted sets, and empties the inheritable
    /// and ambient sets.
    fn limit_capabilities(&self, keep: u64) -> io::Result<()>;
    /// Marks every descriptor from 3 up close-on-exec, so the command
    /// inherits only stdin, stdout and stderr.
    fn close_fds_on_exec(&self) -> io::Result<()>;
}

/// The real implementation, straight onto the kernel.
pub(crate) struct LinuxSyscall;

impl Syscall for LinuxSyscall {
    fn unshare(&self, flags: UnshareFlags) -> io::Result<()> {
        // SAFETY: FILES is never requested, so no thread can observe a file
        // descriptor table that was split from under it.
        debug_assert!(!flags.contains(UnshareFlags::FILES));
        unsafe { rustix::thread::unshare_unsafe(flags) }?;
        Ok(())
    }

    fn make_private(&self, target: &Path) -> io::Result<()> {
        rustix::mount::mount_change(
            target,
            MountPropagationFlags::PRIVATE | MountPropagationFlags::REC,
        )?;
        Ok(())
    }

    fn mount_fs(
        &self,
        fstype: &str,
        target: &Path,
        flags: MountFlags,
        data: &str,
    ) -> io::Result<()> {
        let data = std::ffi::CString::new(data)
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        rustix::mount::mount(fstype, target, fstype, flags, data.as_c_str())?;
        Ok(())
    }

    fn bind(&self, source: &Path, target: &Path, recursive: bool) -> io::Result<()> {
        if recursive {
            rustix::mount::mount_bind_recursive(source, target)?;
        } else {
            rustix::mount::mount_bind(source, target)?;
        }
        Ok(())
    }

    fn remount_bind(&self, target: &Path, flags: MountFlags) -> io::Result<()> {
        // In a user namespace, dropping a flag the kernel locked on a mount
        // inherited from outside fails with EPERM; keeping them only ever
        // makes the mount stricter.
        let current = rustix::fs::statvfs(target)?.f_flag;
        let kept = [
            (StatVfsMountFlags::NOSUID, MountFlags::NOSUID),
            (StatVfsMountFlags::NODEV, MountFlags::NODEV),
            (StatVfsMountFlags::NOEXEC, MountFlags::NOEXEC),
            (StatVfsMountFlags::NOATIME, MountFlags::NOATIME),
            (StatVfsMountFlags::NODIRATIME, MountFlags::NODIRATIME),
            (StatVfsMountFlags::RELATIME, MountFlags::RELATIME),
        ]
        .into_iter()
        .filter(|(has, _)| current.contains(*has))
        .fold(MountFlags::empty(), |all, (_, flag)| all | flag);
        rustix::mount::mount_remount(target, MountFlags::BIND | flags | kept, "")?;
        Ok(())
    }

    fn mount_point(&self, root: &Path, target: &str, file: bool) -> io::Result<PathBuf> {
        let found = resolve_mount_point(
            root,
            target,
            file,
            |_| false,
            |path, is_file| {
                if is_file {
                    self.create_file(path, 0o644)
                } else {
                    self.mkdir(path, 0o755)
                }
            },
        )?;
        Ok(found.expect("nothing stops the walk"))
    }

    fn mount_overlay(
        &self,
        lower: &Path,
        upper: &Path,
        work: &Path,
        target: &Path,
    ) -> io::Result<()> {
        overlay::mount_overlay(&[lower], upper, work, target)
            .map(overlay::OverlayMount::keep)
            .map_err(io::Error::other)
    }

    fn install_file(
        &self,
        source: &Path,
        dest: &Path,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> io::Result<()> {
        let mut from = fs::File::open(source)?;
        let mut to = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dest)?;
        io::copy(&mut from, &mut to)?;
        // Owner before mode: chown clears set-id bits that the mode may ask for.
        std::os::unix::fs::fchown(&to, Some(uid), Some(gid))?;
        to.set_permissions(fs::Permissions::from_mode(mode))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn unmount_detach(&self, target: &Path) -> io::Result<()> {
        rustix::mount::unmount(target, UnmountFlags::DETACH)?;
        Ok(())
    }

    fn pivot_root(&self, new_root: &Path, put_old: &Path) -> io::Result<()> {
        rustix::process::pivot_root(new_root, put_old)?;
        Ok(())
    }

    fn chdir(&self, path: &Path) -> io::Result<()> {
        rustix::process::chdir(path)?;
        Ok(())
    }

    fn mkdir(&self, path: &Path, mode: u32) -> io::Result<()> {
        fs::DirBuilder::new().mode(mode).create(path)
    }

    fn mkdir_all(&self, path: &Path, mode: u32) -> io::Result<()> {
        fs::DirBuilder::new()
            .mode(mode)
            .recursive(true)
            .create(path)
    }

    fn create_file(&self, path: &Path, mode: u32) -> io::Result<()> {
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .map(drop)
    }

    fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
        std::os::unix::fs::symlink(target, link)
    }

    fn set_hostname(&self, name: &str) -> io::Result<()> {
        // SAFETY: the pointer and length describe `name`'s live bytes.
        let rc = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn loopback_up(&self) -> io::Result<()> {
        // SAFETY: socket() has no memory arguments; a valid result is a
        // fresh descriptor that nothing else owns.
        let sock = unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            OwnedFd::from_raw_fd(fd)
        };
        // SAFETY: ifreq is plain old data; all-zero is a valid value.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        // SAFETY: SIOC[GS]IFFLAGS read and write an ifreq, which `req` is.
        unsafe {
            if libc::ioctl(
                sock.as_raw_fd(),
                libc::SIOCGIFFLAGS as libc::Ioctl,
                &mut req,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
            if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS as libc::Ioctl, &req) != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    }

    fn set_groups(&self, gids: &[u32]) -> io::Result<()> {
        let gids: Vec<_> = gids
            .iter()
            .map(|&g| rustix::process::Gid::from_raw(g))
            .collect();
        rustix::thread::set_thread_groups(&gids)?;
        Ok(())
    }

    fn set_gid(&self, gid: u32) -> io::Result<()> {
        let gid = rustix::process::Gid::from_raw(gid);
        rustix::thread::set_thread_res_gid(gid, gid, gid)?;
        Ok(())
    }

    fn set_uid(&self, uid: u32) -> io::Result<()> {
        let uid = rustix::process::Uid::from_raw(uid);
        rustix::thread::set_thread_res_uid(uid, uid, uid)?;
        Ok(())
    }

    fn limit_capabilities(&self, keep: u64) -> io::Result<()> {
        use rustix::thread::{CapabilitySet, CapabilitySets};
        for cap in (0..64).filter(|c| keep & (1 << c) == 0) {
            match rustix::thread::remove_capability_from_bounding_set(
                CapabilitySet::from_bits_retain(1 << cap),
            ) {
                Ok(()) => {}
                // Numbers past the kernel's last capability.
                Err(rustix::io::Errno::INVAL) => break,
                Err(e) => return Err(e.into()),
            }
        }
        let keep = CapabilitySet::from_bits_retain(keep);
        let now = rustix::thread::capabilities(None)?;
        rustix::thread::set_capabilities(
            None,
            CapabilitySets {
                effective: now.permitted & keep,
                permitted: now.permitted & keep,
                inheritable: CapabilitySet::empty(),
            },
        )?;
        rustix::thread::clear_ambient_capability_set()?;
        Ok(())
    }

    fn close_fds_on_exec(&self) -> io::Result<()> {
        // SAFETY: close_range takes no pointers; CLOEXEC only sets a flag.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                3u32,
                u32::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            )
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

#[cfg(test)]
pub(crate) mod fake {
    //! A [`Syscall`] that records each call and can be told to fail one.

    use super::*;
    use std::cell::{Cell, RefCell};

    /// One recorded call, with owned arguments.
    #[derive(Clone, Debug, PartialEq, Eq)]
    pub(crate) enum Call {
        Unshare(UnshareFlags),
        MakePrivate(PathBuf),
        MountFs {
            fstype: String,
            target: PathBuf,
            flags: MountFlags,
            data: String,
        },
        Bind {
            source: PathBuf,
            target: PathBuf,
            recursive: bool,
        },
        RemountBind(PathBuf, MountFlags),
        MountPoint {
            target: String,
            file: bool,
        },
        MountOverlay {
            lower: PathBuf,
            upper: PathBuf,
            work: PathBuf,
            target: PathBuf,
        },
        InstallFile {
            source: PathBuf,
            dest: PathBuf,
            mode: u32,
            uid: u32,
            gid: u32,
        },
        RemoveFile(PathBuf),
        UnmountDetach(PathBuf),
        PivotRoot(PathBuf, PathBuf),
        Chdir(PathBuf),
        Mkdir(PathBuf, u32),
        MkdirAll(PathBuf, u32),
        CreateFile(PathBuf, u32),
        Symlink(PathBuf, PathBuf),
        SetHostname(String),
        LoopbackUp,
        SetGroups(Vec<u32>),
        SetGid(u32),
        SetUid(u32),
        LimitCapabilities(u64),
        CloseFdsOnExec,
    }

    /// Records calls; the call with index `fail_at` returns `EPERM` instead.
    #[derive(Default)]
    pub(crate) struct RecordingSyscall {
        pub(crate) calls: RefCell<Vec<Call>>,
        pub(crate) fail_at: Cell<Option<usize>>,
    }

    impl RecordingSyscall {
        fn record(&self, call: Call) -> io::Result<()> {
            let mut calls = self.calls.borrow_mut();
            if self.fail_at.get() == Some(calls.len()) {
                // Once: a caller that recovers goes on with the next index.
                self.fail_at.set(None);
                return Err(io::Error::from_raw_os_error(libc::EPERM));
            }
            calls.push(call);
            Ok(())
        }
    }

    impl Syscall for RecordingSyscall {
        fn unshare(&self, flags: UnshareFlags) -> io::Result<()> {
            self.record(Call::Unshare(flags))
        }
        fn make_private(&self, target: &Path) -> io::Result<()> {
            self.record(Call::MakePrivate(target.into()))
        }
        fn mount_fs(
            &self,
            fstype: &str,
            target: &Path,
            flags: MountFlags,
            data: &str,
        ) -> io::Result<()> {
            self.record(Call::MountFs {
                fstype: fstype.into(),
                target: target.into(),
                flags,
                data: data.into(),
            })
        }
        fn bind(&self, source: &Path, target: &Path, recursive: bool) -> io::Result<()> {
            self.record(Call::Bind {
                source: source.into(),
                target: target.into(),
                recursive,
            })
        }
        fn remount_bind(&self, target: &Path, flags: MountFlags) -> io::Result<()> {
            self.record(Call::RemountBind(target.into(), flags))
        }
        fn mount_point(&self, root: &Path, target: &str, file: bool) -> io::Result<PathBuf> {
            self.record(Call::MountPoint {
                target: target.into(),
                file,
            })?;
            Ok(root.join(target.trim_start_matches('/')))
        }
        fn mount_overlay(
            &self,
            lower: &Path,
            upper: &Path,
            work: &Path,
            target: &Path,
        ) -> io::Result<()> {
            self.record(Call::MountOverlay {
                lower: lower.into(),
                upper: upper.into(),
                work: work.into(),
                target: target.into(),
            })
        }
        fn install_file(
            &self,
            source: &Path,
            dest: &Path,
            mode: u32,
            uid: u32,
            gid: u32,
        ) -> io::Result<()> {
            self.record(Call::InstallFile {
                source: source.into(),
                dest: dest.into(),
                mode,
                uid,
                gid,
            })
        }
        fn remove_file(&self, path: &Path) -> io::Result<()> {
            self.record(Call::RemoveFile(path.into()))
        }
        fn unmount_detach(&self, target: &Path) -> io::Result<()> {
            self.record(Call::UnmountDetach(target.into()))
        }
        fn pivot_root(&self, new_root: &Path, put_old: &Path) -> io::Result<()> {
            self.record(Call::PivotRoot(new_root.into(), put_old.into()))
        }
        fn chdir(&self, path: &Path) -> io::Result<()> {
            self.record(Call::Chdir(path.into()))
        }
        fn mkdir(&self, path: &Path, mode: u32) -> io::Result<()> {
            self.record(Call::Mkdir(path.into(), mode))
        }
        fn mkdir_all(&self, path: &Path, mode: u32) -> io::Result<()> {
            self.record(Call::MkdirAll(path.into(), mode))
        }
        fn create_file(&self, path: &Path, mode: u32) -> io::Result<()> {
            self.record(Call::CreateFile(path.into(), mode))
        }
        fn symlink(&self, target: &Path, link: &Path) -> io::Result<()> {
            self.record(Call::Symlink(target.into(), link.into()))
        }
        fn set_hostname(&self, name: &str) -> io::Result<()> {
            self.record(Call::SetHostname(name.into()))
        }
        fn loopback_up(&self) -> io::Result<()> {
            self.record(Call::LoopbackUp)
        }
        fn set_groups(&self, gids: &[u32]) -> io::Result<()> {
            self.record(Call::SetGroups(gids.to_vec()))
        }
        fn set_gid(&self, gid: u32) -> io::Result<()> {
            self.record(Call::SetGid(gid))
        }
        fn set_uid(&self, uid: u32) -> io::Result<()> {
            self.record(Call::SetUid(uid))
        }
        fn limit_capabilities(&self, keep: u64) -> io::Result<()> {
            self.record(Call::LimitCapabilities(keep))
        }
        fn close_fds_on_exec(&self) -> io::Result<()> {
            self.record(Call::CloseFdsOnExec)
        }
    }
}
