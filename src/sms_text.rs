//! sms_text: not written yet.
