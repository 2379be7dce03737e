//! Store URLs made safe to print (conventions: secrets are never printed).

/// `url` with every password replaced by `***`: the userinfo password and a
/// `password=` query parameter. A comma-separated list of URLs (Redis
/// Cluster seeds) is redacted URL by URL.
///
/// Mistyped URLs are what end up in error messages, so this does not trust
/// the URL to be well formed: a password may hold unencoded `,`, `/`, `?`
/// or `@`, and the scheme may be missing (`user:password@host`). Hiding a
/// little too much is safe; showing a password is not.
pub fn redact_url(url: &str) -> String {
    // Split only at commas that begin another URL (`…,redis://…`): any other
    // comma belongs to the URL it is in, perhaps to its password.
    let mut urls: Vec<String> = Vec::new();
    for piece in url.split(',') {
        match urls.last_mut() {
            Some(last) if !piece.contains("://") => {
                last.push(',');
                last.push_str(piece);
            }
            _ => urls.push(piece.to_owned()),
        }
    }
    urls.iter()
        .map(|u| redact_one(u))
        .collect::<Vec<_>>()
        .join(",")
}

fn redact_one(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => url.split_at(i + 3),
        None => ("", url),
    };
    // The userinfo ends at the last `@` before the query, or failing that
    // the last `@` at all (a password holding `?`).
    let query = rest.find(['?', '#']).unwrap_or(rest.len());
    let at = rest[..query].rfind('@').or_else(|| rest.rfind('@'));
    let rest = match at.map(|at| rest.split_at(at)) {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***{host}"),
            None => rest.to_owned(),
        },
        None => rest.to_owned(),
    };
    // A password can also ride in the query string (`?password=…`).
    let rest = match rest.split_once('?') {
        Some((path, query)) if query.to_ascii_lowercase().contains("password") => {
            format!("{path}?***")
        }
        _ => rest,
    };
    format!("{scheme}{rest}")
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_show() {
        let cases = [
            (
                "postgres://postgres@127.0.0.1:5432/test",
                "postgres://postgres@127.0.0.1:5432/test",
            ),
            (
                "postgres://app:s3cr%40t@db:5432/app?sslmode=require",
                "postgres://app:***@db:5432/app?sslmode=require",
            ),
            ("redis://:hunter2@cache/0", "redis://:***@cache/0"),
            ("rediss://u:pw@cache:6380", "rediss://u:***@cache:6380"),
            ("redis://cache:6379", "redis://cache:6379"),
            (
                "redis://:a@n1:7000,redis://:b@n2:7001/",
                "redis://:***@n1:7000,redis://:***@n2:7001/",
            ),
            (
                "postgres://db/app?user=a&password=b",
                "postgres://db/app?***",
            ),
            ("memory://", "memory://"),
            ("not a url", "not a url"),
            // Mistyped URLs, which are the ones error messages show.
            ("app:pw@127.0.0.1", "app:***@127.0.0.1"),
            ("postgres://app:pa,ss@db/x", "postgres://app:***@db/x"),
            ("postgres://app:pa/ss@db/x", "postgres://app:***@db/x"),
            ("postgres://app:p@ss@db/x", "postgres://app:***@db/x"),
            ("postgres://app:pa?ss@db/x", "postgres://app:***@db/x"),
            (
                "redis://:a,b@n1:7000,redis://:c@n2",
                "redis://:***@n1:7000,redis://:***@n2",
            ),
            ("postgres://db/app?user=a@b", "postgres://db/app?user=a@b"),
        ];
        for (input, expected) in cases {
            assert_eq!(redact_url(input), expected, "redacting {input}");
        }
    }
}
