//! What a new hardware record is given once: a category inferred from model and OS, and a name.

/// Infer a category (laptop, desktop, phone, tablet, server, other) from what the source says.
pub fn category(
    model: Option<&str>,
    os: Option<&str>,
    device_type: Option<&str>,
    name: Option<&str>,
) -> &'static str {
    let l = |s: Option<&str>| s.unwrap_or_default().to_lowercase();
    let (model, os, dtype, name) = (l(model), l(os), l(device_type), l(name));
    let any = |words: &[&str], s: &str| words.iter().any(|w| s.contains(w));
    if any(&["server"], &os)
        || any(&["server", "poweredge", "proliant", "xserve"], &model)
        || dtype.contains("server")
    {
        return "server";
    }
    if any(&["ipad", "tablet", "galaxy tab", "surface go"], &model)
        || os.contains("ipados")
        || dtype.contains("tablet")
    {
        return "tablet";
    }
    if any(
        &["iphone", "pixel", "galaxy s", "galaxy a", "phone"],
        &model,
    ) || dtype.contains("phone")
        || dtype.contains("mobile")
    {
        return "phone";
    }
    if os == "ios" || os.starts_with("ios ") || os == "android" {
        return if model.contains("ipad") || name.contains("ipad") {
            "tablet"
        } else {
            "phone"
        };
    }
    if any(
        &[
            "macbook",
            "laptop",
            "notebook",
            "thinkpad",
            "latitude",
            "elitebook",
            "probook",
            "xps",
            "zenbook",
            "surface laptop",
            "surface pro",
            "chromebook",
            "yoga",
            "inspiron",
            "precision 5",
            "spectre",
            "envy",
            "vivobook",
        ],
        &model,
    ) || any(&["laptop", "notebook", "portable"], &dtype)
    {
        return "laptop";
    }
    if any(
        &[
            "imac",
            "mac mini",
            "mac pro",
            "mac studio",
            "optiplex",
            "prodesk",
            "elitedesk",
            "thinkcentre",
            "desktop",
            "tower",
            "workstation",
            "veriton",
        ],
        &model,
    ) || any(&["desktop", "workstation"], &dtype)
    {
        return "desktop";
    }
    if os.contains("windows") || os.contains("mac") || os.contains("linux") || os.contains("chrome")
    {
        // A computer of unknown form factor: most fleets are mostly laptops, but guessing would mislead.
        return "other";
    }
    "other"
}

/// A derived name: "Alice's MacBook Pro", or the model, or the device name.
pub fn asset_name(
    person_name: Option<&str>,
    model: Option<&str>,
    device_name: Option<&str>,
) -> Option<String> {
    let model = model.map(str::trim).filter(|s| !s.is_empty());
    let first = person_name
        .and_then(|n| n.split_whitespace().next())
        .filter(|s| !s.is_empty());
    match (first, model) {
        (Some(f), Some(m)) => Some(format!("{f}'s {}", short_model(m))),
        (None, Some(m)) => Some(short_model(m)),
        (Some(f), None) => device_name.map(|d| format!("{f}'s {d}")),
        (None, None) => device_name.map(str::to_string),
    }
}

/// "MacBook Pro (14-inch, 2023)" → "MacBook Pro".
fn short_model(m: &str) -> String {
    m.split(" (").next().unwrap_or(m).trim().to_string()
}

/// Format an asset tag from a sequence number.
pub fn asset_tag(prefix: &str, width: usize, n: u64) -> String {
    format!("{prefix}{n:0width$}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn categories() {
        assert_eq!(
            category(
                Some("MacBook Pro (14-inch, 2023)"),
                Some("macOS"),
                None,
                None
            ),
            "laptop"
        );
        assert_eq!(
            category(Some("iMac (24-inch, 2021)"), Some("macOS"), None, None),
            "desktop"
        );
        assert_eq!(
            category(Some("iPhone 15"), Some("iOS"), None, None),
            "phone"
        );
        assert_eq!(
            category(Some("iPad (10th generation)"), Some("iPadOS"), None, None),
            "tablet"
        );
        assert_eq!(
            category(
                Some("PowerEdge R650"),
                Some("Windows Server 2022"),
                None,
                None
            ),
            "server"
        );
        assert_eq!(
            category(Some("ThinkPad T14 Gen 4"), Some("Windows"), None, None),
            "laptop"
        );
        assert_eq!(
            category(Some("Widget 9000"), Some("Windows"), None, None),
            "other"
        );
    }

    #[test]
    fn names_and_tags() {
        assert_eq!(
            asset_name(
                Some("Alice Smith"),
                Some("MacBook Pro (14-inch, 2023)"),
                None
            )
            .as_deref(),
            Some("Alice's MacBook Pro")
        );
        assert_eq!(
            asset_name(None, Some("iMac (24-inch, 2021)"), None).as_deref(),
            Some("iMac")
        );
        assert_eq!(asset_tag("AS-", 6, 42), "AS-000042");
    }
}
