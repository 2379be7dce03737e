//! Store URLs made safe to print (conventions: secrets are never printed).

/// `url` with every password replaced by `***`: the userinfo password and a
/// `password=` query parameter. A comma-separated list of URLs (Redis
/// Cluster seeds) is redacted URL by URL.
pub fn redact_url(url: &str) -> String {
    url.split(',').map(redact_one).collect::<Vec<_>>().join(",")
}

fn redact_one(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, tail) = rest.split_at(rest.find(['/', '?', '#']).unwrap_or(rest.len()));
    let authority = match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _password)) => format!("{user}:***@{host}"),
            None => authority.to_owned(),
        },
        None => authority.to_owned(),
    };
    // A password can also ride in the query string (`?password=…`).
    let tail = match tail.split_once('?') {
        Some((path, query)) if query.to_ascii_lowercase().contains("password") => {
            format!("{path}?***")
        }
        _ => tail.to_owned(),
    };
    format!("{scheme}://{authority}{tail}")
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
        ];
        for (input, expected) in cases {
            assert_eq!(redact_url(input), expected, "redacting {input}");
        }
    }
}
