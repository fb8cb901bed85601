//! Server-rendered approval pages: the e-mail confirmation page (`/email/act`) and the request page
//! (`/requests/{id}`). Plain HTML with no JavaScript; every request value is escaped.
//!
//! **Access to the request page**: it is shown only to holders of a valid link token for that request
//! (`?t=`), the same tokens the approval mails carry (voting links, or the longer-lived view links of
//! follow-up mails; a used voting link still opens it). A request id alone reveals nothing, and no session or
//! login is needed to read a request one was asked to review.

pub mod confirm;
pub mod html;
pub mod request_page;
