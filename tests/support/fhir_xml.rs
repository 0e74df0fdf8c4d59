//! FHIR JSON into FHIR XML, for fixtures: the unit tests check the XML reader against the JSON
//! one on every JSON fixture, the extraction benchmark times both formats on one Bundle, and
//! the permissive test upstream answers XML. Pure `serde_json`, so any test crate can include
//! it with `#[path]`.

/// A FHIR JSON resource in the FHIR XML format (<http://hl7.org/fhir/R4/xml.html>): a resource
/// is an element named by its type, a primitive its element's `value` attribute, an array its
/// element repeated, a resource held by an element that element's child, the narrative `div`
/// XHTML. `None` when `v` is not a resource.
pub fn to_fhir_xml(v: &serde_json::Value) -> Option<String> {
    fn escape(s: &str) -> String {
        s.replace('&', "&amp;")
            .replace('"', "&quot;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    }
    fn resource(o: &serde_json::Map<String, serde_json::Value>, out: &mut String, root: bool) {
        let ty = o["resourceType"].as_str().unwrap_or("Unknown");
        let ns = if root {
            " xmlns=\"http://hl7.org/fhir\""
        } else {
            ""
        };
        out.push_str(&format!("<{ty}{ns}>"));
        for (k, val) in o {
            if k != "resourceType" {
                element(k, val, out);
            }
        }
        out.push_str(&format!("</{ty}>"));
    }
    fn element(k: &str, v: &serde_json::Value, out: &mut String) {
        use serde_json::Value::*;
        match v {
            Array(items) => items.iter().for_each(|i| element(k, i, out)),
            Object(o) if o.get("resourceType").is_some_and(|t| t.is_string()) => {
                out.push_str(&format!("<{k}>"));
                resource(o, out, false);
                out.push_str(&format!("</{k}>"));
            }
            Object(o) => {
                out.push_str(&format!("<{k}>"));
                for (ck, cv) in o {
                    element(ck, cv, out);
                }
                out.push_str(&format!("</{k}>"));
            }
            // The narrative is XHTML markup already: it goes in as it is.
            String(s) if k == "div" && s.trim_start().starts_with("<div") => out.push_str(s),
            String(s) if k == "div" => out.push_str(&format!(
                "<div xmlns=\"http://www.w3.org/1999/xhtml\">{}</div>",
                escape(s)
            )),
            String(s) => out.push_str(&format!("<{k} value=\"{}\"/>", escape(s))),
            Null => {}
            other => out.push_str(&format!("<{k} value=\"{other}\"/>")),
        }
    }
    let o = v.as_object()?;
    o.get("resourceType")?.as_str()?;
    let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    resource(o, &mut out, true);
    Some(out)
}
