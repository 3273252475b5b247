//! The UPnP (UDA) and IGD error codes a control request is answered with:
//! shared by the SOAP layer, which turns them into faults, and the actions
//! and the daemon, which decide them.

/// The UPnP (UDA) and IGD error codes the gateway answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{} {}", self.code(), self.description())]
pub enum UpnpError {
    InvalidAction,
    InvalidArgs,
    ActionFailed,
    ActionNotAuthorized,
    SpecifiedArrayIndexInvalid,
    NoSuchEntryInArray,
    WildCardNotPermittedInSrcIP,
    WildCardNotPermittedInExtPort,
    ConflictInMappingEntry,
    SamePortValuesRequired,
    OnlyPermanentLeasesSupported,
    RemoteHostOnlySupportsWildcard,
    ExternalPortOnlySupportsWildcard,
    NoPortMapsAvailable,
    ConflictWithOtherMechanisms,
    PortMappingNotFound,
    WildCardNotPermittedInIntPort,
    InconsistentParameters,
}

impl UpnpError {
    /// The `errorCode` of the fault.
    pub fn code(self) -> u16 {
        match self {
            UpnpError::InvalidAction => 401,
            UpnpError::InvalidArgs => 402,
            UpnpError::ActionFailed => 501,
            UpnpError::ActionNotAuthorized => 606,
            UpnpError::SpecifiedArrayIndexInvalid => 713,
            UpnpError::NoSuchEntryInArray => 714,
            UpnpError::WildCardNotPermittedInSrcIP => 715,
            UpnpError::WildCardNotPermittedInExtPort => 716,
            UpnpError::ConflictInMappingEntry => 718,
            UpnpError::SamePortValuesRequired => 724,
            UpnpError::OnlyPermanentLeasesSupported => 725,
            UpnpError::RemoteHostOnlySupportsWildcard => 726,
            UpnpError::ExternalPortOnlySupportsWildcard => 727,
            UpnpError::NoPortMapsAvailable => 728,
            UpnpError::ConflictWithOtherMechanisms => 729,
            UpnpError::PortMappingNotFound => 730,
            UpnpError::WildCardNotPermittedInIntPort => 732,
            UpnpError::InconsistentParameters => 733,
        }
    }

    /// The `errorDescription` of the fault: the UDA wording for 4xx-6xx,
    /// the IGD error names for 7xx.
    pub fn description(self) -> &'static str {
        match self {
            UpnpError::InvalidAction => "Invalid Action",
            UpnpError::InvalidArgs => "Invalid Args",
            UpnpError::ActionFailed => "Action Failed",
            UpnpError::ActionNotAuthorized => "Action not authorized",
            UpnpError::SpecifiedArrayIndexInvalid => "SpecifiedArrayIndexInvalid",
            UpnpError::NoSuchEntryInArray => "NoSuchEntryInArray",
            UpnpError::WildCardNotPermittedInSrcIP => "WildCardNotPermittedInSrcIP",
            UpnpError::WildCardNotPermittedInExtPort => "WildCardNotPermittedInExtPort",
            UpnpError::ConflictInMappingEntry => "ConflictInMappingEntry",
            UpnpError::SamePortValuesRequired => "SamePortValuesRequired",
            UpnpError::OnlyPermanentLeasesSupported => "OnlyPermanentLeasesSupported",
            UpnpError::RemoteHostOnlySupportsWildcard => "RemoteHostOnlySupportsWildcard",
            UpnpError::ExternalPortOnlySupportsWildcard => "ExternalPortOnlySupportsWildcard",
            UpnpError::NoPortMapsAvailable => "NoPortMapsAvailable",
            UpnpError::ConflictWithOtherMechanisms => "ConflictWithOtherMechanisms",
            UpnpError::PortMappingNotFound => "PortMappingNotFound",
            UpnpError::WildCardNotPermittedInIntPort => "WildCardNotPermittedInIntPort",
            UpnpError::InconsistentParameters => "InconsistentParameters",
        }
    }
}
