//! Enums written as words on a command line or in a file (`--format json`):
//! [`words!`] gives a fieldless enum its list of words (`NAMES`) and a
//! `FromStr` that reads them, so that library types need no CLI parser.

/// `words!(Format { "text" => Text, "json" => Json })`: `Format::NAMES` and
/// `impl FromStr for Format` (an unknown word is an error listing the
/// words).
macro_rules! words {
    ($ty:ident { $($word:literal => $variant:ident),+ $(,)? }) => {
        impl $ty {
            /// The words, in the order of the variants.
            pub const NAMES: &[&str] = &[$($word),+];
        }

        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($word => Ok($ty::$variant),)+
                    _ => Err(format!("unknown value `{s}` ({})", Self::NAMES.join(", "))),
                }
            }
        }
    };
}

pub(crate) use words;

#[cfg(test)]
mod tests {
    #[derive(Debug, PartialEq)]
    enum Shade {
        Light,
        Dark,
    }
    super::words!(Shade { "light" => Light, "dark" => Dark });

    #[test]
    fn words_read_their_variants_and_refuse_others() {
        assert_eq!(Shade::NAMES, ["light", "dark"]);
        assert_eq!("dark".parse::<Shade>(), Ok(Shade::Dark));
        assert_eq!("light".parse::<Shade>(), Ok(Shade::Light));
        let err = "Dark".parse::<Shade>().unwrap_err();
        assert_eq!(err, "unknown value `Dark` (light, dark)");
    }
}
