//! This machine's names, from uname(2) (Linux and macOS alike).

/// Host name and kernel release; empty strings if uname fails.
pub fn uname() -> (String, String) {
    // SAFETY: utsname is plain old data; uname fills it with NUL-terminated strings.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return (String::new(), String::new());
    }
    let text = |field: &[libc::c_char]| {
        let bytes: Vec<u8> = field.iter().take_while(|&&c| c != 0).map(|&c| c as u8).collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    (text(&u.nodename), text(&u.release))
}

#[cfg(test)]
mod tests {
    #[test]
    fn uname_names_this_host() {
        let (host, release) = super::uname();
        assert!(!host.is_empty());
        #[cfg(target_os = "linux")]
        assert_eq!(
            release,
            std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap().trim()
        );
    }
}
