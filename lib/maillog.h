/* maillog: placeholder, being written. */
#pragma once
