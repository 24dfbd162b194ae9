//! Checks of the fuzz targets over kvd's own decoders (the binary peer frames).

use kvd::peer_codec::{decode_request, decode_response, encode_request, encode_response};

/// Any bytes as a peer request frame and as a peer answer frame: an error or a message, never
/// a panic; a decoded message encodes again and decodes to the same message and id.
pub fn peer_decode(data: &[u8]) {
    if let Ok((id, req)) = decode_request(data) {
        let frame = encode_request(id, &req).expect("a decoded request has a binary encoding");
        let (id2, again) = decode_request(&frame).expect("a re-encoded request decodes");
        assert_eq!(id, id2);
        assert_eq!(format!("{req:?}"), format!("{again:?}"));
    }
    if let Ok((id, resp)) = decode_response(data) {
        let frame = encode_response(id, &resp).expect("a decoded answer has a binary encoding");
        let (id2, again) = decode_response(&frame).expect("a re-encoded answer decodes");
        assert_eq!(id, id2);
        assert_eq!(format!("{resp:?}"), format!("{again:?}"));
    }
}
