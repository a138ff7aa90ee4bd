//! Authentication as kube-apiserver does it for the stand-in's needs: x509 client certificates
//! (`--client-ca-file`, user = CN, groups = O) and static bearer tokens (`--token-auth-file`).

use std::path::Path;

use zeroize::Zeroizing;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

/// The user a verified client certificate names, attached to each request of that connection.
#[derive(Clone, Debug, Default)]
pub struct PeerUser(pub Option<User>);

/// `--token-auth-file`: CSV lines `token,user,uid,"group1,group2"`.
#[derive(Default)]
pub struct TokenAuth {
    tokens: Vec<(Zeroizing<String>, User)>,
}

impl TokenAuth {
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| format!("reading token file {}: {e}", path.display()))?,
        );
        let mut tokens = Vec::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() || line.trim_start().starts_with('#') {
                continue;
            }
            let cols = split_csv(line);
            if cols.len() < 3 {
                return Err(format!(
                    "token file '{}' must have at least 3 columns (token, user name, user uid), found {}",
                    path.display(),
                    cols.len()
                ));
            }
            if cols[0].is_empty() {
                return Err(format!(
                    "token file '{}' has empty token at line {}",
                    path.display(),
                    i + 1
                ));
            }
            let groups = cols
                .get(3)
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default();
            tokens.push((
                Zeroizing::new(cols[0].clone()),
                User {
                    name: cols[1].clone(),
                    groups,
                },
            ));
        }
        Ok(Self { tokens })
    }

    pub fn authenticate(&self, token: &str) -> Option<User> {
        self.tokens
            .iter()
            .find(|(t, _)| t.as_str() == token)
            .map(|(_, u)| u.clone())
    }
}

/// Minimal CSV field splitter with double-quote support (what `encoding/csv` accepts for these files).
fn split_csv(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                cur.push('"');
                chars.next();
            }
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out
}

/// CN and O of a DER certificate already verified against the client CA by rustls.
pub fn user_from_cert(der: &[u8]) -> Option<User> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject
        .iter_common_name()
        .next()?
        .as_str()
        .ok()?
        .to_string();
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok().map(String::from))
        .collect();
    Some(User { name, groups })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_file_with_quoted_groups() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("tokens.csv");
        std::fs::write(&p, "abc,admin,1,\"system:masters,dev\"\nxyz,bob,2\n").unwrap();
        let t = TokenAuth::load(&p).unwrap();
        let u = t.authenticate("abc").unwrap();
        assert_eq!(u.name, "admin");
        assert_eq!(u.groups, vec!["system:masters", "dev"]);
        assert_eq!(t.authenticate("xyz").unwrap().groups.len(), 0);
        assert!(t.authenticate("nope").is_none());
    }
}
