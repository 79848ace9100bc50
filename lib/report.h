/* report: placeholder, being written. */
#pragma once
