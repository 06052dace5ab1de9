//! Which new file names are editors' and tools' scratch files, kept in the mount's memory and
//! never sent to the store. A pure rule over one name; knows nothing of the store.

/// The scratch-name rules, as text for the README and `--help`.
pub const SCRATCH_RULES: &str = "\
A new file is kept local to the mount (never sent to the store) when its name is:
  .NAME.swp .NAME.swo ... .NAME.swa              vim swap files (a leading dot, then .sw[a-p])
  .NAME.swpx .NAME.swx                           vim's probes for swap names
  NAME~                                          backups (vim, emacs, nano)
  4913, 5036, 5159, ... 6020                     vim's write probe (4913 + 123 k, k < 10)
  #NAME#                                         emacs auto-save files
  .#NAME                                         emacs lock files
  sedXXXXXX                                      sed -i temporary files (sed + 6 letters or digits)
Renaming such a file onto a key stores its content as that key's value, in one update.
A key that already exists in the store keeps behaving as a key, whatever its name.";

/// Is `name` a scratch name (see [`SCRATCH_RULES`])?
pub fn is_scratch(name: &str) -> bool {
    vim_swap(name) || backup(name) || vim_probe(name) || emacs(name) || sed_temp(name)
}

fn vim_swap(name: &str) -> bool {
    let Some(stem) = name.strip_prefix('.') else {
        return false;
    };
    // `.swp` alone (an unnamed buffer) shares its leading dot with the suffix; a trailing
    // `x` marks vim's probe for a name it may use.
    let (stem, probe) = match stem.strip_suffix('x') {
        Some(stem) => (stem, true),
        None => (stem, false),
    };
    let Some(rest) = stem.strip_prefix("sw").or_else(|| {
        let (head, tail) = stem.rsplit_once(".sw")?;
        (!head.is_empty()).then_some(tail)
    }) else {
        return false;
    };
    match rest.as_bytes() {
        [b'a'..=b'p'] => true,
        [] => probe, // `.NAME.swx`
        _ => false,
    }
}

fn backup(name: &str) -> bool {
    name.len() > 1 && name.ends_with('~')
}

fn vim_probe(name: &str) -> bool {
    if name.len() != 4 || !name.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let Ok(n) = name.parse::<u32>() else {
        return false;
    };
    (4913..=4913 + 123 * 9).contains(&n) && (n - 4913) % 123 == 0
}

fn emacs(name: &str) -> bool {
    (name.len() > 2 && name.starts_with('#') && name.ends_with('#'))
        || (name.len() > 2 && name.starts_with(".#"))
}

fn sed_temp(name: &str) -> bool {
    name.len() == 9
        && name.starts_with("sed")
        && name.bytes().skip(3).all(|b| b.is_ascii_alphanumeric())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn editor_and_tool_scratch_names() {
        for name in [
            ".port.swp",
            ".port.swo",
            ".port.swa",
            ".port.swx",
            ".port.swpx",
            ".a.b.swn",
            ".swp",
            ".swx",
            "port~",
            ".port~",
            "4913",
            "5036",
            "6020",
            "#port#",
            ".#port",
            "sedAb12Z9",
            "sedaaaaaa",
        ] {
            assert!(is_scratch(name), "{name} should be scratch");
        }
    }

    #[test]
    fn ordinary_keys_are_not_scratch() {
        for name in [
            "port",
            "swp",
            "port.swp",
            ".port.swq",
            ".port.swqx",
            ".port.swpxx",
            "..swp",
            ".sw",
            ".port.sw",
            "~",
            "4912",
            "4914",
            "6143",
            "49130",
            "#",
            "##",
            "#port",
            "port#",
            ".#",
            "sed",
            "sedAb12Z",
            "sedAb12Z90",
            "sed-b12Z9",
            "app.tmp",
            "x.bak",
            ".hidden",
        ] {
            assert!(!is_scratch(name), "{name} should not be scratch");
        }
    }

    #[test]
    fn non_ascii_names_do_not_panic() {
        for name in [".é.swp", ".ééé", "éé", "sedéééé", "#é#", ".#é"] {
            let _ = is_scratch(name);
        }
        assert!(is_scratch(".é.swp"));
    }
}
