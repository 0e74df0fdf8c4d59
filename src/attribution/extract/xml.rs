//! FHIR XML, read into the same reduced tree the JSON visitor builds, so that one
//! interpretation ([`super::walk_resource`]) answers "whose data is in these bytes" for both
//! formats.
//!
//! The FHIR XML format (<http://hl7.org/fhir/R4/xml.html>) maps onto the JSON one element for
//! key: a resource is an element named by its type (`<Observation>`), a primitive's value is
//! its `value` attribute (`<reference value="Patient/1"/>`), and a resource held by an element
//! (`resource`, `contained`, `outcome`, `Parameters.parameter.resource`) is that element's only
//! child. So each element is read as the JSON key of its name, with the `value` attribute as
//! the key's string and its children as the key's object; an element whose child is a resource
//! stands for that resource. XHTML narrative (`div`) is skipped unread, as in JSON.
//!
//! One pass over the bytes with a pull parser ([`quick_xml`]), nothing kept but what
//! attribution reads. Bounds as for JSON: element nesting deeper than [`MAX_DEPTH`] is invalid
//! (not a stack overflow: the reader keeps its own stack), a document type declaration (which
//! FHIR forbids, and which could declare entities) is invalid, and entities other than XML's
//! five predefined ones and character references are errors, never expanded.

use std::borrow::Cow;

use quick_xml::events::{BytesStart, Event};
use quick_xml::{Reader, XmlVersion};

use super::{Found, Obj, Res};

/// Deepest element nesting read; deeper input is invalid (as JSON's 128 levels).
pub const MAX_DEPTH: usize = 128;

/// Why an XML document could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum XmlError {
    /// Not well-formed XML (or not UTF-8, or an unknown entity).
    Syntax,
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// A document type declaration: FHIR forbids them.
    DocType,
}

/// The element names attribution reads; every other element is walked generically.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Name {
    /// An element named by a resource type (`[A-Z]...`): a resource.
    Resource(String),
    Id,
    Reference,
    Type,
    Identifier,
    FullUrl,
    Method,
    Url,
    Location,
    ResourceKey,
    Request,
    Response,
    Contained,
    Entry,
    Other,
}

impl Name {
    fn of(local: &str) -> Name {
        match local {
            "id" => Name::Id,
            "reference" => Name::Reference,
            "type" => Name::Type,
            "identifier" => Name::Identifier,
            "fullUrl" => Name::FullUrl,
            "method" => Name::Method,
            "url" => Name::Url,
            "location" => Name::Location,
            "resource" => Name::ResourceKey,
            "request" => Name::Request,
            "response" => Name::Response,
            "contained" => Name::Contained,
            "entry" => Name::Entry,
            l if l.as_bytes().first().is_some_and(u8::is_ascii_uppercase) => {
                Name::Resource(l.to_string())
            }
            _ => Name::Other,
        }
    }
}

/// One open element.
struct Frame<'a> {
    name: Name,
    /// Its `value` attribute (a primitive's value).
    value: Option<Cow<'a, str>>,
    /// Its children, as the JSON visitor keeps an object's keys.
    obj: Obj<'a>,
    /// The resource element it holds, if any: then the element stands for that resource.
    inner: Option<Obj<'a>>,
}

impl<'a> Frame<'a> {
    fn open(start: &BytesStart<'a>) -> Result<Frame<'a>, XmlError> {
        let name = Name::of(start.local_name().as_ref());
        let mut value = None;
        // Only the elements attribution reads need their value (most elements are codes,
        // displays, dates ...: their attributes are skipped unread).
        let wanted = !matches!(name, Name::Other | Name::Resource(_));
        if wanted {
            for attr in start.attributes() {
                let attr = attr.map_err(|_| XmlError::Syntax)?;
                if attr.key.local_name().as_ref() == "value" {
                    let v = attr
                        .normalized_value(XmlVersion::Implicit1_0)
                        .map_err(|_| XmlError::Syntax)?;
                    value = Some(Cow::Owned(v.into_owned()));
                }
            }
        }
        let mut obj = Obj::default();
        if let Name::Resource(ty) = &name {
            obj.resource_type = Some(Cow::Owned(ty.clone()));
        }
        Ok(Frame {
            name,
            value,
            obj,
            inner: None,
        })
    }

    /// The element's content as the JSON key of its name would hold it: the resource it wraps,
    /// or its own children. Anything a wrapper holds beside its resource still counts.
    fn content(self) -> (Name, Option<Cow<'a, str>>, Obj<'a>) {
        match self.inner {
            Some(mut resource) => {
                self.obj.merge_into(&mut resource.acc);
                (self.name, self.value, resource)
            }
            None => (self.name, self.value, self.obj),
        }
    }
}

/// Attach a closed element to its parent, as the JSON visitor attaches a key's value.
fn close<'a>(frame: Frame<'a>, parent: Option<&mut Frame<'a>>, top: &mut Option<Obj<'a>>) {
    let (name, value, content) = frame.content();
    let Some(parent) = parent else {
        *top = Some(content);
        return;
    };
    if let Name::Resource(_) = name {
        // The resource an element holds: the element stands for it.
        match parent.inner {
            None => parent.inner = Some(content),
            // A second resource in one element (not valid FHIR): its references still count.
            Some(_) => content.merge_into(&mut parent.obj.acc),
        }
        return;
    }
    let p = &mut parent.obj;
    let slot = match name {
        Name::Id => Some(&mut p.id),
        Name::Reference => Some(&mut p.reference),
        Name::Type => Some(&mut p.type_name),
        Name::FullUrl => Some(&mut p.rare_mut().full_url),
        Name::Method => Some(&mut p.rare_mut().method),
        Name::Url => Some(&mut p.url),
        Name::Location => Some(&mut p.rare_mut().location),
        // An identifier is an element with children; a primitive called so is something else.
        Name::Identifier => {
            p.identifier |= value.is_none();
            None
        }
        Name::ResourceKey => {
            p.rare_mut().resource = Some(Box::new(content));
            return;
        }
        Name::Request => {
            p.rare_mut().request = Some(Box::new(content));
            return;
        }
        Name::Response => {
            p.rare_mut().response = Some(Box::new(content));
            return;
        }
        Name::Contained => {
            p.rare_mut().contained.push(content);
            return;
        }
        Name::Entry => {
            p.rare_mut().entry.push(content.into_entry());
            return;
        }
        Name::Resource(_) | Name::Other => None,
    };
    if let (Some(slot), Some(value)) = (slot, value) {
        *slot = Some(value);
    }
    // Children of any other element (and extensions on a primitive) are walked.
    content.merge_into(&mut p.acc);
}

/// Parse a FHIR XML document into the reduced tree.
pub(super) fn parse(body: &[u8]) -> Result<Res<'_>, XmlError> {
    let mut reader = Reader::from_reader(body);
    reader.config_mut().check_end_names = true;
    let mut stack: Vec<Frame<'_>> = Vec::new();
    let mut top: Option<Obj<'_>> = None;
    loop {
        match reader.read_event().map_err(|_| XmlError::Syntax)? {
            Event::Start(start) => {
                if start.local_name().as_ref() == "div" {
                    // XHTML narrative: never holds a reference.
                    reader
                        .read_to_end(start.name())
                        .map_err(|_| XmlError::Syntax)?;
                    continue;
                }
                if stack.len() >= MAX_DEPTH {
                    return Err(XmlError::TooDeep);
                }
                stack.push(Frame::open(&start)?);
            }
            Event::Empty(start) => {
                if start.local_name().as_ref() == "div" {
                    continue;
                }
                let frame = Frame::open(&start)?;
                close(frame, stack.last_mut(), &mut top);
            }
            Event::End(_) => {
                let frame = stack.pop().ok_or(XmlError::Syntax)?;
                close(frame, stack.last_mut(), &mut top);
            }
            Event::DocType(_) => return Err(XmlError::DocType),
            Event::Eof => break,
            // Text, comments, CDATA, the declaration, processing instructions: FHIR XML keeps
            // every value in attributes (narrative aside).
            _ => {}
        }
        if top.is_some() && stack.is_empty() {
            // The root closed; only whitespace, comments and processing instructions may follow.
            loop {
                match reader.read_event().map_err(|_| XmlError::Syntax)? {
                    Event::Eof => break,
                    Event::Start(_) | Event::Empty(_) | Event::End(_) => {
                        return Err(XmlError::Syntax)
                    }
                    Event::DocType(_) => return Err(XmlError::DocType),
                    _ => {}
                }
            }
            break;
        }
    }
    if !stack.is_empty() {
        return Err(XmlError::Syntax);
    }
    let Some(top) = top else {
        return Err(XmlError::Syntax);
    };
    Ok(match top.into_found() {
        Found::Resource(r) => r,
        Found::Plain(p) => Res {
            resource_type: Cow::Borrowed(""),
            refs: p.refs,
            nested: p.resources,
            ..Res::default()
        },
    })
}
