//! The XML writer behind every document the IGD serves: SOAP responses and
//! faults, the device and service descriptions, and port-mapping listings.
//! Any string can be written: characters XML 1.0 cannot carry are replaced
//! rather than producing a document a client would refuse.
use std::borrow::Cow;

use quick_xml::Writer;
use quick_xml::events::{BytesCData, BytesEnd, BytesStart, BytesText, Event};

/// Whether `c` is a `Char` of XML 1.0.
pub(crate) fn is_xml_char(c: char) -> bool {
    matches!(c, '\u{9}' | '\u{A}' | '\u{D}' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..)
}

/// `s` with every character XML 1.0 cannot carry replaced by U+FFFD, so
/// that any string can be written into a well-formed document.
pub(crate) fn xml_chars(s: &str) -> Cow<'_, str> {
    if s.chars().all(is_xml_char) {
        Cow::Borrowed(s)
    } else {
        Cow::Owned(
            s.chars()
                .map(|c| if is_xml_char(c) { c } else { '\u{FFFD}' })
                .collect(),
        )
    }
}

/// A small document builder over quick-xml's [`Writer`]: text and
/// attribute values are escaped by quick-xml after [`xml_chars`].
pub(crate) struct XmlDoc {
    writer: Writer<Vec<u8>>,
}

impl XmlDoc {
    /// A document starting with `<?xml version="1.0"?>` and `line_end`;
    /// indented by two spaces if `indent`.
    pub(crate) fn new(indent: bool, line_end: &str) -> Self {
        let mut buf = Vec::with_capacity(1024);
        buf.extend_from_slice(b"<?xml version=\"1.0\"?>");
        buf.extend_from_slice(line_end.as_bytes());
        let writer = if indent {
            Writer::new_with_indent(buf, b' ', 2)
        } else {
            Writer::new(buf)
        };
        XmlDoc { writer }
    }

    fn event(&mut self, event: Event<'_>) {
        // Writing into a Vec cannot fail.
        let _ = self.writer.write_event(event);
    }

    pub(crate) fn open(&mut self, name: &str, attrs: &[(&str, &str)]) {
        let mut start = BytesStart::new(name);
        for (key, value) in attrs {
            start.push_attribute((*key, xml_chars(value).as_ref()));
        }
        self.event(Event::Start(start));
    }

    pub(crate) fn close(&mut self, name: &str) {
        self.event(Event::End(BytesEnd::new(name)));
    }

    /// `<name>text</name>`.
    pub(crate) fn text(&mut self, name: &str, text: &str) {
        self.event(Event::Start(BytesStart::new(name)));
        // Also for "": keeps `<name></name>` on one line when indenting.
        self.event(Event::Text(BytesText::new(&xml_chars(text))));
        self.event(Event::End(BytesEnd::new(name)));
    }

    /// `<name><![CDATA[text]]></name>`, split where `text` holds `]]>`.
    pub(crate) fn cdata(&mut self, name: &str, text: &str) {
        self.event(Event::Start(BytesStart::new(name)));
        let text = xml_chars(text);
        for section in BytesCData::escaped(&text) {
            self.event(Event::CData(section));
        }
        self.event(Event::End(BytesEnd::new(name)));
    }

    pub(crate) fn finish(self, line_end: &str) -> String {
        let mut buf = self.writer.into_inner();
        buf.extend_from_slice(line_end.as_bytes());
        // Only str pieces were written.
        String::from_utf8(buf).unwrap_or_default()
    }
}
