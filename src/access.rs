//! Who may change vramd's state: the one rule shared by the HTTP API and D-Bus.
//!
//! Loading, unloading, pinning and interrupting change what every other user of the GPU
//! gets, so they are allowed to root and to members of `[daemon] control_group` only.
//! Reading status, estimating and generating stay open to anyone who can reach the socket
//! (the socket's own mode, `root:vramd 0660`, already decides who that is).
//!
//! [`check`] is the rule, a pure function of the caller's credentials, and [`Denied`] its
//! refusal; each front end words that refusal itself (HTTP 403 in `api/error.rs`, a typed
//! D-Bus error in `dbus/error.rs`). This module knows neither front end. Where credentials
//! come from is the callers' business: `SO_PEERCRED` for the Unix socket (the API's
//! `Privileged` extractor, through [`socket_caller`]; `SO_PEERGROUPS` adds the supplementary
//! groups the peer had when it connected), `GetConnectionCredentials` for D-Bus (see
//! `dbus::interface`, through [`bus_caller`]). D-Bus may learn only the primary group
//! (dbus-daemon before 1.16 sends no `UnixGroupIDs`), so further groups come from the
//! process itself ([`proc_groups`], `/proc/<pid>/status`) or, where vramd cannot see that
//! process (vramd.service runs with `ProtectProc=invisible`), from the group database for
//! the caller's user ([`user_groups`]), which is what `usermod -aG vramd` changes.

use std::ffi::CString;

/// What is known about a caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Caller {
    /// A local process: its user and every group it is known to be in.
    Local { uid: u32, gids: Vec<u32> },
    /// A TCP peer (the optional loopback socket): its user cannot be known.
    Remote,
}

/// The group allowed to change state, resolved once per check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ControlGroup {
    pub name: String,
    /// `None` when no such group exists: then only root may change state.
    pub gid: Option<u32>,
}

impl ControlGroup {
    /// Looks the group up now (a group created after vramd started counts at once).
    pub fn resolve(name: &str) -> ControlGroup {
        ControlGroup {
            name: name.to_owned(),
            gid: lookup_group(name),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    #[error("changing vramd's state needs root or membership in the group {group:?} (caller uid {uid})")]
    NotInGroup { uid: u32, group: String },
    #[error("changing vramd's state over TCP needs an API key with the `control` role; or use the Unix socket as root or a member of {group:?}")]
    Remote { group: String },
}

/// The rule for `caller` against `[daemon] control_group`, the group looked up now (see
/// [`ControlGroup::resolve`]); a `control` API key (see `keys`) is the right to change
/// state whoever presents it, on either listener.
pub fn authorize(caller: &Caller, key: Option<crate::keys::Role>, control_group: &str) -> Result<(), Denied> {
    if key == Some(crate::keys::Role::Control) {
        return Ok(());
    }
    check(caller, &ControlGroup::resolve(control_group))
}

/// The rule: root, or a member of the control group.
pub fn check(caller: &Caller, group: &ControlGroup) -> Result<(), Denied> {
    match caller {
        Caller::Local { uid, gids } if *uid == 0 || group.gid.is_some_and(|g| gids.contains(&g)) => Ok(()),
        Caller::Local { uid, .. } => Err(Denied::NotInGroup {
            uid: *uid,
            group: group.name.clone(),
        }),
        Caller::Remote => Err(Denied::Remote {
            group: group.name.clone(),
        }),
    }
}

/// `getgrnam_r(3)`: the gid of a group (from `/etc/group`, or NSS where configured).
pub fn lookup_group(name: &str) -> Option<u32> {
    let cname = CString::new(name).ok()?;
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: every pointer refers to live, correctly sized memory owned here; `result`
        // points into `grp` and `buf`, which outlive its only use below.
        let mut grp: libc::group = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::group = std::ptr::null_mut();
        let rc = unsafe {
            libc::getgrnam_r(
                cname.as_ptr(),
                &mut grp,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut result,
            )
        };
        if rc == libc::ERANGE && buf.len() < (1 << 20) {
            buf.resize(buf.len() * 2, 0);
            continue;
        }
        return (rc == 0 && !result.is_null()).then_some(grp.gr_gid);
    }
}

/// What `/proc/<pid>/status` says about a process's credentials.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcCredentials {
    /// Real uid.
    pub uid: u32,
    /// Real gid.
    pub gid: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
}

/// Parses the `Uid:`, `Gid:` and `Groups:` lines of `/proc/<pid>/status`.
pub fn parse_proc_status(text: &str) -> Option<ProcCredentials> {
    let field = |name: &str| {
        text.lines().find_map(|l| l.strip_prefix(name)).map(|rest| {
            rest.split_whitespace()
                .filter_map(|n| n.parse::<u32>().ok())
                .collect::<Vec<_>>()
        })
    };
    Some(ProcCredentials {
        uid: *field("Uid:")?.first()?,
        gid: *field("Gid:")?.first()?,
        groups: field("Groups:").unwrap_or_default(),
    })
}

/// The groups of process `pid`, primary first, provided it still runs as `uid`.
///
/// The pid comes from the kernel (`SO_PEERCRED`) or the bus at connection time; checking the
/// uid guards against the process having exited and its pid having been reused by another
/// user's process. `None` when it cannot be read or does not match.
pub fn proc_groups(pid: u32, uid: u32) -> Option<Vec<u32>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let creds = parse_proc_status(&text)?;
    (creds.uid == uid).then(|| {
        let mut gids = vec![creds.gid];
        gids.extend(creds.groups.into_iter().filter(|g| *g != creds.gid));
        gids
    })
}

/// `getpwuid_r(3)`: the name and primary gid of `uid`'s user.
fn user_entry(uid: u32) -> Option<(CString, u32)> {
    let mut buf = vec![0u8; 4096];
    // SAFETY: as in `lookup_group`: live, sized buffers; `result` points into them, and
    // `pw_name` is a NUL-terminated string inside `buf`, copied out before `buf` is dropped.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr().cast(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() {
        return None;
    }
    let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) }.to_owned();
    Some((name, pwd.pw_gid))
}

/// The groups the group database gives `uid`'s user (`getgrouplist(3)`): what
/// `usermod -aG` changes. Empty for a uid without a user.
pub fn user_groups(uid: u32) -> Vec<u32> {
    let Some((name, primary)) = user_entry(uid) else {
        return Vec::new();
    };
    let mut room: libc::c_int = 64;
    loop {
        let mut groups = vec![0 as libc::gid_t; room as usize];
        let mut count = room;
        // SAFETY: `name` is a C string and `groups` has room for `count` entries; on -1,
        // `count` is set to the number needed.
        let rc = unsafe { libc::getgrouplist(name.as_ptr(), primary, groups.as_mut_ptr(), &mut count) };
        if rc >= 0 {
            groups.truncate(count.max(0) as usize);
            return groups;
        }
        if count <= room || room >= 65536 {
            return vec![primary];
        }
        room = count;
    }
}

/// Every group a caller is in: `known` first (from the kernel or the bus), then its process's
/// groups from `/proc`, or, where the process cannot be seen, its user's from the database.
fn groups_of(uid: u32, known: &[u32], pid: Option<u32>) -> Vec<u32> {
    let more = pid
        .and_then(|p| proc_groups(p, uid))
        .unwrap_or_else(|| user_groups(uid));
    let mut gids = known.to_vec();
    for g in more {
        if !gids.contains(&g) {
            gids.push(g);
        }
    }
    gids
}

/// The caller at the other end of a Unix socket, from what the kernel says about it:
/// `SO_PEERCRED` (`uid`, `gid`, `pid`) and `SO_PEERGROUPS` (`groups`).
pub fn socket_caller(uid: u32, gid: u32, groups: &[u32], pid: Option<u32>) -> Caller {
    let mut known = vec![gid];
    known.extend(groups.iter().filter(|g| **g != gid));
    Caller::Local {
        uid,
        gids: groups_of(uid, &known, pid),
    }
}

/// The caller behind a D-Bus message, from the bus's `GetConnectionCredentials`: its
/// `UnixGroupIDs` when the bus sends them (dbus-broker, dbus-daemon ≥ 1.16), else as for
/// [`socket_caller`]. A caller without a Unix user id (a bus reached over TCP) cannot be
/// vouched for.
pub fn bus_caller(uid: Option<u32>, gids: Option<Vec<u32>>, pid: Option<u32>) -> Caller {
    let Some(uid) = uid else {
        return Caller::Remote;
    };
    let gids = match gids.filter(|g| !g.is_empty()) {
        Some(g) => g,
        None => groups_of(uid, &[], pid),
    };
    Caller::Local { uid, gids }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(gid: Option<u32>) -> ControlGroup {
        ControlGroup {
            name: "vramd".into(),
            gid,
        }
    }

    fn local(uid: u32, gids: &[u32]) -> Caller {
        Caller::Local {
            uid,
            gids: gids.to_vec(),
        }
    }

    #[test]
    fn root_is_always_allowed() {
        assert_eq!(check(&local(0, &[0]), &group(Some(990))), Ok(()));
        assert_eq!(check(&local(0, &[]), &group(None)), Ok(()));
    }

    #[test]
    fn members_of_the_control_group_are_allowed() {
        assert_eq!(check(&local(1000, &[1000, 990]), &group(Some(990))), Ok(()));
        // The primary group counts like any other.
        assert_eq!(check(&local(1000, &[990]), &group(Some(990))), Ok(()));
    }

    #[test]
    fn everyone_else_is_denied() {
        let e = check(&local(1000, &[1000, 27]), &group(Some(990))).unwrap_err();
        assert_eq!(
            e,
            Denied::NotInGroup {
                uid: 1000,
                group: "vramd".into()
            }
        );
        assert!(e.to_string().contains("root or membership in the group \"vramd\""));
        // Without the group, nobody but root.
        assert!(check(&local(1000, &[1000]), &group(None)).is_err());
        // TCP peers are never trusted, whatever the group.
        assert!(matches!(
            check(&Caller::Remote, &group(Some(990))),
            Err(Denied::Remote { .. })
        ));
    }

    #[test]
    fn proc_status_lines() {
        let text = "Name:\tbash\nUid:\t1000\t1000\t1000\t1000\nGid:\t1001\t1001\t1001\t1001\n\
                    FDSize:\t256\nGroups:\t4 24 990 1001 \n";
        assert_eq!(
            parse_proc_status(text),
            Some(ProcCredentials {
                uid: 1000,
                gid: 1001,
                groups: vec![4, 24, 990, 1001]
            })
        );
        let none = "Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\nGroups:\t\n";
        assert_eq!(parse_proc_status(none).unwrap().groups, Vec::<u32>::new());
        assert_eq!(parse_proc_status("Name:\tx\n"), None);
    }

    #[test]
    fn this_process_and_its_groups() {
        // SAFETY: getuid/getgid cannot fail.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        let gids = proc_groups(std::process::id(), uid).expect("own /proc entry");
        assert_eq!(gids[0], gid);
        assert_eq!(
            proc_groups(std::process::id(), uid.wrapping_add(1)),
            None,
            "uid must match"
        );
        assert_eq!(lookup_group("root"), Some(0));
        assert_eq!(lookup_group("no-such-group-vramd-test"), None);
        // `authorize` looks the group up by name, then applies the rule.
        assert_eq!(authorize(&local(1000, &[1000, 0]), None, "root"), Ok(()));
        assert!(authorize(&local(1000, &[1000]), None, "no-such-group-vramd-test").is_err());
        assert_eq!(authorize(&local(0, &[]), None, "no-such-group-vramd-test"), Ok(()));

        // The group database: root is in group root; a uid without a user is in none.
        assert!(user_groups(0).contains(&0));
        assert_eq!(user_groups(4_000_000_000), Vec::<u32>::new());
        // A process vramd cannot see (gone, or hidden by ProtectProc=invisible): its user's
        // groups from the database stand in, so a supplementary member is still recognised.
        let Caller::Local { gids: seen, .. } = socket_caller(65534, 12345, &[], Some(i32::MAX as u32)) else {
            panic!("a socket peer is local")
        };
        assert_eq!(seen[0], 12345, "the kernel's gid comes first");
        assert_eq!(seen[1..], user_groups(65534)[..]);
        let Caller::Local {
            uid: u,
            gids: peer_gids,
        } = socket_caller(uid, gid, &[4242], Some(std::process::id()))
        else {
            panic!("a socket peer is local")
        };
        assert_eq!(
            (u, peer_gids[0], peer_gids[1]),
            (uid, gid, 4242),
            "SO_PEERGROUPS' groups are the caller's"
        );
        // The bus's group list wins; without it, /proc by pid; without a uid, nobody.
        assert_eq!(bus_caller(Some(5), Some(vec![7, 8]), None), local(5, &[7, 8]));
        assert_eq!(bus_caller(Some(uid), None, Some(std::process::id())), local(uid, &gids));
        // uid 5 has no /proc entry here; its user's groups come from the database.
        assert_eq!(bus_caller(Some(5), None, None), local(5, &user_groups(5)));
        assert_eq!(bus_caller(None, Some(vec![0]), None), Caller::Remote);
    }

    #[test]
    fn a_control_key_may_change_state_and_a_generate_key_may_not() {
        // A control key is the right to change state, over TCP too; a generate key is not.
        use crate::keys::Role;
        assert_eq!(authorize(&Caller::Remote, Some(Role::Control), "vramd"), Ok(()));
        assert!(authorize(&Caller::Remote, Some(Role::Generate), "vramd").is_err());
        assert!(authorize(&local(1000, &[1000]), Some(Role::Generate), "no-such-group-vramd-test").is_err());
        assert_eq!(
            authorize(&local(1000, &[1000]), Some(Role::Control), "no-such-group-vramd-test"),
            Ok(())
        );
    }
}
