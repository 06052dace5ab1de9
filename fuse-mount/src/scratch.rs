//! Which new file names are scratch files (hidden files, editors' and tools' temporaries), kept
//! in the mount's memory and never sent to the store. A pure rule over one name; knows nothing
//! of the store.

/// The scratch-name rules, as text for the README and `--help`.
pub const SCRATCH_RULES: &str = "\
A new file is kept local to the mount (never sent to the store) when its name is:
  .NAME                                          hidden: any name with a leading dot, which
                                                 covers the temporaries of rsync (.NAME.XXXXXX),
                                                 vim (.NAME.swp, ...), emacs (.#NAME) and of
                                                 atomic-write helpers given a hidden prefix
  NAME~                                          backups (vim, emacs, nano)
  4913, 5036, 5159, ... 6020                     vim's write probe (4913 + 123 k, k < 10)
  #NAME#                                         emacs auto-save files
  sedXXXXXX                                      sed -i temporary files (sed + 6 letters or digits)
Renaming such a file onto a key stores its content as that key's value, in one update.
A key that already exists in the store keeps behaving as a key, whatever its name.";

/// Is `name` a scratch name (see [`SCRATCH_RULES`])?
pub fn is_scratch(name: &str) -> bool {
    hidden(name) || backup(name) || vim_probe(name) || emacs(name) || sed_temp(name)
}

/// A hidden name: a leading dot (`.` and `..` are not names).
fn hidden(name: &str) -> bool {
    name.starts_with('.') && name != "." && name != ".."
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
    name.len() > 2 && name.starts_with('#') && name.ends_with('#')
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
            ".hidden",
            ".port.Xy3aQ9",
            ".port.tmp",
            "..swp",
            ".port.swq",
            ".#",
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
            ".",
            "..",
            "~",
            "4912",
            "4914",
            "6143",
            "49130",
            "#",
            "##",
            "#port",
            "port#",
            "sed",
            "sedAb12Z",
            "sedAb12Z90",
            "sed-b12Z9",
            "app.tmp",
            "x.bak",
            "tmpk3j_2x9a",
        ] {
            assert!(!is_scratch(name), "{name} should not be scratch");
        }
    }

    #[test]
    fn non_ascii_names_do_not_panic() {
        for name in [".é.swp", ".ééé", "éé", "sedéééé", "#é#", ".#é", "é~"] {
            let _ = is_scratch(name);
        }
        assert!(is_scratch(".é.swp"));
    }
}
