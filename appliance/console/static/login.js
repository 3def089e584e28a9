'use strict';
// Carries ?next= into the form, so that the login returns to the page
// that asked for it (the server accepts only console paths).
const next = new URLSearchParams(location.search).get('next');
if (next) document.getElementById('next').value = next;
